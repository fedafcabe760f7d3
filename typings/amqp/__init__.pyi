from typing import Any

from amqp import exceptions as exceptions
from amqp.exceptions import (
    AccessRefused as AccessRefused,
)
from amqp.exceptions import (
    ChannelError as ChannelError,
)
from amqp.exceptions import (
    ConnectionError as ConnectionError,
)
from amqp.exceptions import (
    MessageNacked as MessageNacked,
)
from amqp.exceptions import (
    NotFound as NotFound,
)
from amqp.exceptions import (
    PreconditionFailed as PreconditionFailed,
)
from amqp.exceptions import (
    ResourceError as ResourceError,
)

class Message:
    body: Any
    properties: dict[str, Any]
    delivery_info: dict[str, Any]
    def __init__(
        self, body: Any = ..., children: Any = ..., channel: Any = ..., **properties: Any
    ) -> None: ...

class Channel:
    channel_id: int
    def __getattr__(self, name: str) -> Any: ...

class Connection:
    connection_errors: tuple[type[BaseException], ...]
    channel_errors: tuple[type[BaseException], ...]
    recoverable_connection_errors: tuple[type[BaseException], ...]
    recoverable_channel_errors: tuple[type[BaseException], ...]
    def __init__(
        self,
        host: str = ...,
        userid: str = ...,
        password: str = ...,
        virtual_host: str = ...,
        **kwargs: Any,
    ) -> None: ...
    def connect(self, callback: Any = ...) -> None: ...
    def channel(self, channel_id: int | None = ..., callback: Any = ...) -> Channel: ...
    def drain_events(self, timeout: float | None = ...) -> None: ...
    def close(
        self, reply_code: int = ..., reply_text: str = ..., method_sig: Any = ..., argsig: str = ...
    ) -> None: ...
    def collect(self) -> None: ...
    def __enter__(self) -> Connection: ...
    def __exit__(self, *exc: object) -> None: ...
