"""AMQP message body schemas, one module per conversation."""
