"""Device type ``qemu``: a virtual machine booted from the job's images.

QEMU runs with the job's kernel + initramfs (``kernel`` and ``ramdisk`` /
``initrd`` images of the deploy action) or a disk image (``image``/``disk``/
``rootfs``); its serial port is a TCP server on 127.0.0.1
(``-serial tcp:127.0.0.1:PORT,server=on,wait=on,nodelay=on``), opened through
the same pyserial console as every other device (``socket://127.0.0.1:PORT``).
``wait=on`` keeps the VM paused until the console is connected, so not a byte
of boot output is lost.

The machinery lives in ``device_agent/qemu/``: the binary and ports
(``host``), KVM or TCG (``accel``), the overlay in the initramfs
(``initrd``), one running QEMU that never outlives its dispatcher
(``process``). This module is the device type: job images → command line →
power, console and boot.

The overlay (``lava-*`` helpers and test definitions) reaches the VM as a
second cpio archive appended to the initramfs (the kernel unpacks every
archive of a concatenated ``-initrd``); :meth:`QemuDevice.install_overlay`
then only has to return where it is. Without a ramdisk (disk boot) or when the
overlay comes after boot, it is typed through the console like on any board.

Settings (``[device.settings]``): ``qemu_binary``, ``arch`` (x86_64),
``memory`` (MiB, default 128, at least 96), ``cpus`` (1), ``accel``
(``auto``/``kvm``/``tcg``; env ``LAVAMQ_QEMU_ACCEL`` overrides ``auto``),
``kernel_args`` (appended), ``extra_args`` (list), ``runtime_dir``,
``vmnet_dir``, ``network`` (``true``: a group network when in a group).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from device_agent.console import Console, ConsoleBase, ConsoleTimeout
from device_agent.devices.base import BootRequest, Device, TargetInterface, remaining
from device_agent.qemu.accel import choose_accel
from device_agent.qemu.host import find_qemu, free_port, qemu_pids, runtime_root
from device_agent.qemu.initrd import OVERLAY_TARGET, build_initrd
from device_agent.qemu.job_shape import (
    ContextOptions,
    add_kernel_args,
    arg_label,
    auto_login,
    context_options,
    image_arguments,
)
from device_agent.qemu.process import PortInUse, QemuProcess, reap_leftover_vms
from device_agent.vmnet import GroupNetwork, VmNic
from schemas.errors import InfrastructureError, JobError

log = logging.getLogger(__name__)

DEFAULT_PROMPT = r"lavamq-vm# "
MIN_MEMORY_MB = 96
KERNEL_IMAGE_KEYS = ("kernel",)
RAMDISK_IMAGE_KEYS = ("ramdisk", "initrd", "initramfs")
DISK_IMAGE_KEYS = ("image", "disk", "rootfs", "system")

# callers import these from here (the device type's public face)
__all__ = [
    "DEFAULT_PROMPT",
    "OVERLAY_TARGET",
    "QemuDevice",
    "build_initrd",
    "choose_accel",
    "find_qemu",
    "qemu_pids",
    "reap_leftover_vms",
    "runtime_root",
]


class QemuDevice(Device):
    """A QEMU virtual machine booted from the job's deployed images."""

    device_type: ClassVar[str] = "qemu"
    known_settings: ClassVar[frozenset[str]] = frozenset(
        {
            "qemu_binary",
            "arch",
            "memory",
            "cpus",
            "accel",
            "kernel_args",
            "extra_args",
            "runtime_dir",
            "vmnet_dir",
            "network",
            "console_args",
        }
    )

    def __init__(self, config: Mapping[str, Any], workdir: str | Path) -> None:
        super().__init__(config, workdir)
        self.arch = str(self.settings.get("arch", "x86_64"))
        self.memory = int(self.settings.get("memory", 128))
        self.cpus = int(self.settings.get("cpus", 1))
        self.accel_setting = str(self.settings.get("accel", "auto"))
        self.runtime_dir = Path(self.settings.get("runtime_dir") or runtime_root())
        self.vmnet_dir = self.settings.get("vmnet_dir")
        self.network_enabled = bool(self.settings.get("network", True))
        self.images: dict[str, Path] = {}
        #: image name → LAVA's ``image_arg`` (the job's own command line pieces)
        self.image_args: dict[str, str] = {}
        #: the role's ``context:`` (arch, memory, extra_options ...)
        self.options = ContextOptions()
        #: ``auto_login:`` as expect/send steps, then its login_commands
        self.login_steps: list[dict[str, str]] | None = None
        self.login_commands: list[str] = []
        self.overlay_dir: Path | None = None
        self.overlay_in_initrd = False
        self.job_kernel_args: list[str] = []
        self.group: str | None = None
        self.node: str = self.name
        self.members: list[str] | None = None
        self.nic: VmNic | None = None
        self._network: GroupNetwork | None = None
        self.process: QemuProcess | None = None
        self.accel: str | None = None
        #: seconds from QEMU start to the first prompt of the last boot
        self.last_boot_seconds: float | None = None
        self._qemu_started = 0.0
        #: the running VM was started by connect() and has not been booted yet
        self._fresh = False

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> list[str]:
        """What is wrong with a ``qemu`` device's config (memory, arch, accel ...)."""
        problems = super().validate_config(config)
        settings = config.get("settings", {})
        try:
            memory = int(settings.get("memory", 128))
            if memory < MIN_MEMORY_MB:
                problems.append(
                    f"settings.memory: {memory} MiB is too little: the test image needs at "
                    f"least {MIN_MEMORY_MB}"
                )
        except (TypeError, ValueError):
            problems.append("settings.memory: must be a number of MiB")
        accel = str(settings.get("accel", "auto"))
        if accel not in ("auto", "kvm", "tcg"):
            problems.append(f"settings.accel: must be auto, kvm or tcg (got {accel!r})")
        extra = settings.get("extra_args", [])
        if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
            problems.append("settings.extra_args: must be a list of strings")
        return problems

    def default_prompts(self) -> list[str]:
        """The prompt of the project's test image."""
        return [DEFAULT_PROMPT]

    def describe(self) -> dict[str, Any]:
        """The device's description, with its arch, memory and accel setting."""
        data = super().describe()
        data.update({"arch": self.arch, "memory": self.memory, "accel": self.accel_setting})
        return data

    # --- what the job hands over -----------------------------------------------
    def prepare_boot(self, request: BootRequest) -> list[str]:
        """The job's images (with their ``image_arg``), prompts, ``auto_login`` and
        ``context`` for the next boot; warnings for what it does not use."""
        self.set_images(request.images)
        self.image_args = {k: v for k, v in request.image_args.items() if k in request.images}
        self.prompts = list(request.prompts) or list(
            self.config.get("prompts") or self.default_prompts()
        )
        login = auto_login(request.auto_login)
        self.login_steps = login.steps() if login is not None else None
        self.login_commands = list(login.login_commands) if login is not None else []
        self.options, warnings = context_options(request.context)
        if self.image_args:
            warnings += image_arguments(self.image_args, self.images).warnings
        return warnings

    @property
    def job_arch(self) -> str:
        """The architecture this boot runs: the job's ``context: arch``, else the setting."""
        return self.options.arch or self.arch

    def set_images(self, images: Mapping[str, str | Path]) -> None:
        """The deploy action's local image paths, by image name (kernel, ramdisk, ...)."""
        self.images = {name: Path(path) for name, path in images.items()}

    def set_group(self, group: str | None, node: str, members: Sequence[str] | None) -> None:
        """The MultiNode group this VM belongs to: it joins that group's network."""
        self.group = group
        self.node = node
        self.members = list(members) if members is not None else None

    def target_interface(self) -> TargetInterface:
        """The VM's address and MAC on its group network (lava-target-ip/-mac)."""
        if self.nic is None:
            return TargetInterface(why="the VM has no network of its own (no group network)")
        return TargetInterface(str(self.nic.address.ip), self.nic.mac)

    def set_kernel_args(self, args: Sequence[str] | str) -> None:
        """Kernel arguments the job adds to the next boot."""
        self.job_kernel_args = args.split() if isinstance(args, str) else list(args)

    def set_overlay(self, overlay_dir: str | Path | None) -> None:
        """Ship ``overlay_dir`` inside the initramfs of the next boot (at /lava-overlay)."""
        self.overlay_dir = Path(overlay_dir) if overlay_dir is not None else None

    # --- images -> command line --------------------------------------------------
    def _image(self, keys: Sequence[str]) -> Path | None:
        for key in keys:
            if key in self.images:
                path = self.images[key]
                if not path.is_file():
                    raise JobError(f"device {self.name}: image {key!r} is missing: {path}")
                return path
        return None

    def boot_media(self) -> tuple[Path | None, Path | None, Path | None]:
        """(kernel, ramdisk, disk) from the deployed images; JobError if unbootable.

        With LAVA's ``image_arg`` the job's arguments say what is what; the
        kernel found there is the one the KVM probe boots.
        """
        if self.image_args:
            for label in self.image_args:
                self._image((label,))
            labels = [arg_label(self.image_args, opt) for opt in ("-kernel", "-initrd")]
            found = [self.images[label] if label else None for label in labels]
            return found[0], found[1], None
        kernel = self._image(KERNEL_IMAGE_KEYS)
        ramdisk = self._image(RAMDISK_IMAGE_KEYS)
        disk = self._image(DISK_IMAGE_KEYS)
        if kernel is None and disk is None:
            deployed = ", ".join(sorted(self.images)) or "none"
            raise JobError(
                f"device {self.name}: a qemu boot needs a 'kernel' (with 'ramdisk') or a disk "
                f"'image' from the deploy action (deployed: {deployed})"
            )
        if ramdisk is not None and kernel is None:
            raise JobError(f"device {self.name}: a 'ramdisk' was deployed without a 'kernel'")
        return kernel, ramdisk, disk

    def _disk_format(self, disk: Path) -> str:
        with open(disk, "rb") as fh:
            return "qcow2" if fh.read(4) == b"QFI\xfb" else "raw"

    def command_line(self, port: int, accel: str) -> list[str]:
        """The whole QEMU command: lavamq's console, QMP and network around the job's
        images (LAVA's ``image_arg`` pieces when the job gives them)."""
        if self.image_args:
            return self._job_command_line(port, accel)
        kernel, ramdisk, disk = self.boot_media()
        cmd = self._base_args(port, accel)
        if kernel is not None:
            append = [
                "console=ttyS0,115200",
                "panic=-1",
                "quiet",
                *self._kernel_args(),
            ]
            if disk is not None and not any(a.startswith("root=") for a in append):
                append.append("root=/dev/vda")
            cmd += ["-kernel", str(kernel), "-append", " ".join(append)]
            initrd = self._initrd(ramdisk)
            if initrd is not None:
                cmd += ["-initrd", str(initrd)]
        if disk is not None:
            cmd += [
                "-drive",
                f"file={disk},format={self._disk_format(disk)},if=virtio,snapshot=on",
            ]
            if kernel is None:
                cmd += ["-boot", "c"]
        if self.nic is not None:
            cmd += self.nic.qemu_args()
        cmd += list(self.settings.get("extra_args", []))
        return cmd

    def _job_command_line(self, port: int, accel: str) -> list[str]:
        """LAVA's shape: the job's ``image_arg`` pieces, filled in, and its
        ``context`` options; the overlay joins the ``-initrd`` image."""
        self.boot_media()
        images: dict[str, Path | str] = dict(self.images)
        ramdisk = arg_label(self.image_args, "-initrd")
        self.overlay_in_initrd = False
        if ramdisk is not None:
            initrd = self._initrd(self.images[ramdisk])
            assert initrd is not None
            images[ramdisk] = initrd
        job_args = image_arguments(self.image_args, images).args
        cmd = self._base_args(port, accel)
        if self.nic is not None:
            cmd += self.nic.qemu_args()
        cmd += list(self.settings.get("extra_args", []))
        cmd += self.options.qemu_args()
        return cmd + add_kernel_args(job_args, self._kernel_args())

    def _kernel_args(self) -> list[str]:
        """What lavamq adds to the kernel command line: the node's name and address."""
        args = [f"lavamq.hostname={self.node}"]
        if self.nic is not None:
            args += self.nic.kernel_args()
        args += str(self.settings.get("kernel_args", "")).split()
        return args + self.job_kernel_args

    def _base_args(self, port: int, accel: str) -> list[str]:
        """QEMU with lavamq's console port, QMP socket and pidfile; no media yet."""
        qemu = find_qemu(self.job_arch, self.settings.get("qemu_binary"))
        pidfile = self.runtime_dir / f"{self.name}.pid"
        qmp = self.runtime_dir / f"{self.name}.qmp"
        return [
            qemu,
            "-name",
            f"lavamq-{self.name}",
            "-accel",
            accel,
            "-m",
            str(self.options.memory or self.memory),
            "-smp",
            str(self.options.cpus or self.cpus),
            "-nodefaults",
            "-display",
            "none",
            "-vga",
            "none",
            "-no-reboot",
            "-pidfile",
            str(pidfile),
            "-qmp",
            f"unix:{qmp},server=on,wait=off",
            "-serial",
            f"tcp:127.0.0.1:{port},server=on,wait=on,nodelay=on",
        ]

    def _initrd(self, ramdisk: Path | None) -> Path | None:
        self.overlay_in_initrd = False
        if ramdisk is None:
            return None
        if self.overlay_dir is None:
            return ramdisk
        out = self.workdir / f"{self.name}-initrd-with-overlay.cpio"
        build_initrd([ramdisk], out, self.overlay_dir, OVERLAY_TARGET)
        self.overlay_in_initrd = True
        return out

    # --- power ---------------------------------------------------------------------
    def power_on(self) -> None:
        """Start the VM (leftovers of an earlier run reaped first)."""
        if self.process is not None and self.process.running():
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        reap_leftover_vms(self.runtime_dir)
        kernel, _, _ = self.boot_media()
        qemu = find_qemu(self.job_arch, self.settings.get("qemu_binary"))
        # context no_kvm: the job asks for TCG (LAVA's template drops -enable-kvm)
        accel = "tcg" if self.options.no_kvm else self.accel_setting
        self.accel = choose_accel(accel, qemu, kernel)
        network = self.network_enabled and not self.options.no_network
        if network and self.group and self.nic is None:
            self._network = GroupNetwork(self.group, self.vmnet_dir)
            self.nic = self._network.attach(self.node, self.members)
        last_error: InfrastructureError | None = None
        try:
            for _attempt in range(3):
                port = free_port()
                proc = QemuProcess(
                    self.name,
                    self.command_line(port, self.accel),
                    pidfile=self.runtime_dir / f"{self.name}.pid",
                    qmp=self.runtime_dir / f"{self.name}.qmp",
                    port=port,
                    logfile=self.workdir / f"qemu-{self.name}.log",
                )
                log.info("device %s: starting %s", self.name, " ".join(proc.cmd))
                try:
                    proc.start()
                except PortInUse as exc:
                    last_error = exc
                    continue
                self.process = proc
                self._qemu_started = time.monotonic()
                return
            assert last_error is not None
            raise last_error
        except BaseException:
            self._leave_network()
            raise

    def power_off(self) -> None:
        """Stop the VM (QMP quit, SIGTERM, SIGKILL) and leave the group network."""
        if self.console is not None:
            self.close()
        proc, self.process = self.process, None
        try:
            if proc is not None:
                proc.stop()
                log.info("device %s: VM stopped", self.name)
        finally:
            self._leave_network()

    def _leave_network(self) -> None:
        network, self._network = self._network, None
        self.nic = None
        if network is not None:
            network.detach(self.node)

    # --- console and boot ----------------------------------------------------------
    def _open_console(self) -> ConsoleBase:
        if self.process is None or not self.process.running():
            raise InfrastructureError(f"device {self.name}: the VM is not running (power it on)")
        return Console(
            self.process.console_url,
            name=self.name,
            prompts=self.prompts,
            open_timeout=10.0,
            # the VM's console goes with the VM: no reconnect to wait for
            reconnect_pause=False,
        )

    def connect(self) -> ConsoleBase:
        """The VM's console; with images set and the VM off, this starts the VM.

        QEMU's console only exists once QEMU runs, and ``wait=on`` holds the
        guest until it is connected: a caller that opens the console before
        booting (to log every byte) gets the whole boot output, and the
        following :meth:`boot` uses this fresh VM instead of restarting it.
        """
        if (self.process is None or not self.process.running()) and self.images:
            self.power_on()
            self._fresh = True
        return super().connect()

    def boot(self, timeout: float, setup: Sequence[str] = ()) -> ConsoleBase:
        """Start the VM (unless :meth:`connect` just did) and wait for its shell prompt."""
        deadline = time.monotonic() + timeout
        fresh, self._fresh = self._fresh, False
        if not (fresh and self.process is not None and self.process.running()):
            self.power_off()
        try:
            self.power_on()
            console = self.connect()
            try:
                self.login(console, deadline)
                self.wait_for_prompt(console, deadline)
            except ConsoleTimeout as exc:
                raise self._no_prompt(console, timeout, exc) from None
        except BaseException as exc:
            tail = self.process.log_tail(300) if self.process is not None else ""
            self.power_off()
            # a console timeout says all there is (what it waited for, what came);
            # anything else of the lab's (QEMU died ...) gets what QEMU printed
            if (
                isinstance(exc, InfrastructureError)
                and not isinstance(exc, ConsoleTimeout)
                and tail != "(no QEMU output)"
            ):
                raise InfrastructureError(f"{exc} (QEMU said: {tail})") from exc
            raise
        self.last_boot_seconds = time.monotonic() - self._qemu_started
        log.info(
            "device %s: prompt after %.2f s (%s)", self.name, self.last_boot_seconds, self.accel
        )
        self.run_setup(console, [*self.login_commands, *setup], deadline)
        return console

    def _no_prompt(
        self, console: ConsoleBase, timeout: float, exc: ConsoleTimeout
    ) -> ConsoleTimeout:
        """The boot's timeout as the job writer needs it: what it waited for, what came."""
        waited = exc.details.get("patterns") or self.prompts
        lines = [ln for ln in console.recent_output(2000).splitlines() if ln.strip()][-8:]
        shown = "\n".join(f"  | {ln[:200]}" for ln in lines) or "  (no console output at all)"
        return ConsoleTimeout(
            f"device {self.name}: no {' or '.join(repr(p) for p in waited)} on the console "
            f"within the boot's {round(timeout, 1):g} s; the last console lines:\n{shown}",
            console=self.name,
            patterns=list(waited),
        )

    def login(self, console: ConsoleBase, deadline: float) -> None:
        """The job's ``auto_login`` when it gives one, else the device's own ``login``."""
        if self.login_steps is None:
            super().login(console, deadline)
            return
        for step in self.login_steps:
            console.expect(step["expect"], remaining(deadline, f"device {self.name}: login"))
            console.sendline(step["send"])

    def install_overlay(
        self, overlay_dir: Path, timeout: float, target: str = "", *, job_id: str = ""
    ) -> str:
        """Where the overlay is in the VM: in the initramfs if it went in at boot."""
        if (
            self.overlay_in_initrd
            and self.overlay_dir is not None
            and Path(overlay_dir).resolve() == self.overlay_dir.resolve()
            and target in ("", OVERLAY_TARGET)
        ):
            return OVERLAY_TARGET
        return super().install_overlay(overlay_dir, timeout, target, job_id=job_id)
