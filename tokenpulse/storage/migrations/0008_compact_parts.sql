-- 0008: parts of the spans table, and of the two views' tables with a row per span, stay in
-- ClickHouse's Compact format (all columns in one file) up to 100 MB uncompressed instead of 10 MB.
-- Why: a Wide part has two files per column (~120 for spans, with its two maps), and creating a
-- file is what a small insert and an early merge mostly pay for on this machine kind (~0.5 ms per
-- created file measured on ext4; an insert of 10 rows into spans cost ~60 ms of CPU). Inserts of
-- ~10,000 spans (~10 MB) were written Wide: bench/storage.py measured ClickHouse's CPU per row at
-- 10,000 rows per insert down from ~72 to ~42 us, at 20,000 from ~43 to ~25 us. Parts above 100 MB
-- (~100,000 spans) are merged into the Wide format as before, so the long windows that panels read
-- are in Wide parts either way. Existing parts change format only when next merged.
ALTER TABLE {db}.spans MODIFY SETTING min_bytes_for_wide_part = 104857600;
ALTER TABLE {db}.trace_tags MODIFY SETTING min_bytes_for_wide_part = 104857600;
ALTER TABLE {db}.agent_spans MODIFY SETTING min_bytes_for_wide_part = 104857600
