from typing import Any

class Basic:
    Ack: Any
    Nack: Any
