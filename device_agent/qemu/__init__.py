"""The QEMU machinery behind device type ``qemu`` (device_agent/devices/qemu.py).

One module per job: :mod:`.host` (the emulator binary, ports, running QEMUs),
:mod:`.accel` (KVM or TCG), :mod:`.initrd` (the overlay appended to the
initramfs as a cpio archive), :mod:`.process` (one running QEMU: start, stop,
never outliving its dispatcher). Importing any of them starts no thread and
installs no signal handler: that happens when the first VM starts.
"""
