"""The device room: devices, consoles, the lava-* helpers and MultiNode on the device side."""
