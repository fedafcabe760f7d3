from typing import Any

class BasicProperties:
    content_type: str | None
    delivery_mode: int | None
    headers: dict[str, Any] | None
    message_id: str | None
    user_id: str | None
    type: str | None
    correlation_id: str | None
    reply_to: str | None
    expiration: str | None
    def __init__(
        self,
        content_type: str | None = ...,
        content_encoding: str | None = ...,
        headers: dict[str, Any] | None = ...,
        delivery_mode: int | None = ...,
        priority: int | None = ...,
        correlation_id: str | None = ...,
        reply_to: str | None = ...,
        expiration: str | None = ...,
        message_id: str | None = ...,
        timestamp: int | None = ...,
        type: str | None = ...,
        user_id: str | None = ...,
        app_id: str | None = ...,
        cluster_id: str | None = ...,
    ) -> None: ...

class Basic:
    class Deliver:
        consumer_tag: str
        delivery_tag: int
        redelivered: bool
        exchange: str
        routing_key: str

    class GetOk:
        delivery_tag: int
        redelivered: bool
        exchange: str
        routing_key: str
        message_count: int
