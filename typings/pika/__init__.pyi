from collections.abc import Callable
from typing import Any

from pika import exceptions as exceptions
from pika import spec as spec
from pika.spec import BasicProperties as BasicProperties

class PlainCredentials:
    username: str
    password: str
    def __init__(self, username: str, password: str, erase_on_connect: bool = ...) -> None: ...

class ConnectionParameters:
    credentials: PlainCredentials | None
    def __init__(
        self,
        host: str = ...,
        port: int = ...,
        virtual_host: str = ...,
        credentials: PlainCredentials = ...,
        **kwargs: Any,
    ) -> None: ...

class URLParameters(ConnectionParameters):
    def __init__(self, url: str) -> None: ...

OnMessage = Callable[[BlockingChannel, spec.Basic.Deliver, BasicProperties, bytes], object]

class BlockingChannel:
    channel_number: int
    is_open: bool
    def basic_qos(
        self, prefetch_size: int = ..., prefetch_count: int = ..., global_qos: bool = ...
    ) -> None: ...
    def basic_consume(
        self,
        queue: str,
        on_message_callback: OnMessage,
        auto_ack: bool = ...,
        exclusive: bool = ...,
        consumer_tag: str | None = ...,
        arguments: dict[str, Any] | None = ...,
    ) -> str: ...
    def basic_cancel(self, consumer_tag: str) -> Any: ...
    def basic_get(
        self, queue: str, auto_ack: bool = ...
    ) -> tuple[spec.Basic.GetOk | None, BasicProperties | None, bytes | None]: ...
    def basic_ack(self, delivery_tag: int = ..., multiple: bool = ...) -> None: ...
    def basic_nack(
        self, delivery_tag: int = ..., multiple: bool = ..., requeue: bool = ...
    ) -> None: ...
    def basic_publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes | str,
        properties: BasicProperties | None = ...,
        mandatory: bool = ...,
    ) -> None: ...
    def confirm_delivery(self) -> None: ...
    def exchange_declare(
        self,
        exchange: str,
        exchange_type: str = ...,
        passive: bool = ...,
        durable: bool = ...,
        auto_delete: bool = ...,
        internal: bool = ...,
        arguments: dict[str, Any] | None = ...,
    ) -> Any: ...
    def exchange_delete(self, exchange: str | None = ..., if_unused: bool = ...) -> Any: ...
    def queue_declare(
        self,
        queue: str,
        passive: bool = ...,
        durable: bool = ...,
        exclusive: bool = ...,
        auto_delete: bool = ...,
        arguments: dict[str, Any] | None = ...,
    ) -> Any: ...
    def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str | None = ...,
        arguments: dict[str, Any] | None = ...,
    ) -> Any: ...
    def queue_purge(self, queue: str) -> Any: ...
    def queue_delete(self, queue: str, if_unused: bool = ..., if_empty: bool = ...) -> Any: ...
    def start_consuming(self) -> None: ...
    def stop_consuming(self, consumer_tag: str | None = ...) -> None: ...
    def close(self, reply_code: int = ..., reply_text: str = ...) -> None: ...

class BlockingConnection:
    is_open: bool
    def __init__(
        self, parameters: ConnectionParameters | list[ConnectionParameters] | None = ...
    ) -> None: ...
    def channel(self, channel_number: int | None = ...) -> BlockingChannel: ...
    def process_data_events(self, time_limit: float | None = ...) -> None: ...
    def sleep(self, duration: float) -> None: ...
    def close(self, reply_code: int = ..., reply_text: str = ...) -> None: ...
    def __enter__(self) -> BlockingConnection: ...
    def __exit__(self, *exc: object) -> None: ...
