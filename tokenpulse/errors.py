"""tokenpulse's exceptions, one tree.

    TokenpulseError
     ├── ConfigError          invalid settings; raised at start-up, never later
     ├── InvalidRequest       an OTLP body that cannot be decoded (INVALID_ARGUMENT / 400)
     ├── RequestTooLarge      body or inflated body over the limit (RESOURCE_EXHAUSTED / 413)
     └── StorageError         a ClickHouse failure, classified where it happens
          ├── RetryableStorageError   network, overload, server-side trouble: try again later
          ├── DataError               the batch itself was refused (bad types or values)
          └── QueryBusy               user queries are all in use: try again later (503)

Expected outcomes of a write (stored, busy, refused) are return values of the writer
(``tokenpulse.storage.writer``: ``Stored``, ``Busy``, ``Refused``), not exceptions.
Messages never carry secrets (URLs are stripped of credentials before logging).
"""


class TokenpulseError(Exception):
    pass


class ConfigError(TokenpulseError):
    pass


class InvalidRequest(TokenpulseError):
    pass


class RequestTooLarge(TokenpulseError):
    pass


class StorageError(TokenpulseError):
    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class RetryableStorageError(StorageError):
    pass


class DataError(StorageError):
    pass


class QueryBusy(StorageError):
    pass
