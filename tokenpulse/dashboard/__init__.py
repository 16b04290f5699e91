"""The built-in dashboard page, served by the admin server at ``/`` (docs/dashboard.md).

Static files only, in ``static/``: ``index.html``, ``app.js``, ``style.css`` and the vendored Chart.js in
``static/vendor/``. The page reads the same JSON as everyone else (``/api/panels/*``, ``/api/alerts``,
``/v1/throttle``) and refreshes every 5 seconds.
"""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"

