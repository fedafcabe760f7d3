"""LAVA's QEMU job shape without a VM: image_arg placeholders, context, auto_login."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from device_agent.devices import create_device
from device_agent.devices.base import BootRequest
from device_agent.devices.qemu import QemuDevice
from device_agent.qemu.job_shape import (
    add_kernel_args,
    arg_label,
    auto_login,
    context_options,
    image_arguments,
    substitute,
)
from device_agent.vmnet import VmNic
from schemas.errors import JobError

KERNEL_ARG = '-kernel {kernel} -append "console=ttyS0,115200 root=/dev/ram0"'


def test_placeholders_are_filled_as_lava_fills_them() -> None:
    files: dict[str, Path | str] = {
        "rootfs": Path("/w/images/rootfs"),
        "kernel": "/w/images/kernel",
    }
    assert substitute("-drive format=raw,file={rootfs}", files) == (
        "-drive format=raw,file=/w/images/rootfs"
    )
    # a placeholder naming no image stays as written (and is reported by image_arguments)
    assert substitute("-dtb {dtb}", files) == "-dtb {dtb}"
    out = image_arguments(
        {"kernel": KERNEL_ARG, "rootfs": "-drive format=raw,file={rootfs} -dtb {dtb}"},
        {"kernel": "/w/k", "rootfs": "/w/r", "modules": "/w/m"},
    )
    assert out.args == [
        "-kernel",
        "/w/k",
        "-append",
        "console=ttyS0,115200 root=/dev/ram0",
        "-drive",
        "format=raw,file=/w/r",
        "-dtb",
        "{dtb}",
    ]
    assert out.warnings == [
        "image 'rootfs': image_arg names {dtb}, which is no deployed image",
        "image 'modules' has no image_arg: not on the QEMU command line",
    ]
    with pytest.raises(JobError, match=r"image 'kernel': image_arg .*No closing quotation"):
        image_arguments({"kernel": '-append "open'}, {"kernel": "/k"})


def test_lavamq_kernel_args_join_the_jobs_append() -> None:
    extra = ["lavamq.hostname=n1", "lavamq.ip=169.254.1.1/16"]
    args = ["-kernel", "/k", "-append", "console=ttyS0", "-initrd", "/i"]
    assert add_kernel_args(args, extra) == [
        "-kernel",
        "/k",
        "-append",
        "console=ttyS0 lavamq.hostname=n1 lavamq.ip=169.254.1.1/16",
        "-initrd",
        "/i",
    ]
    assert add_kernel_args(["-kernel", "/k"], extra)[-2:] == ["-append", " ".join(extra)]
    # no kernel (a disk boot): the image's own boot loader decides
    assert add_kernel_args(["-drive", "file=/d"], extra) == ["-drive", "file=/d"]
    assert arg_label({"kernel": KERNEL_ARG, "initrd": "-initrd {initrd}"}, "-initrd") == "initrd"
    assert arg_label({"kernel": KERNEL_ARG}, "-initrd") is None


def test_context_options_and_unknown_keys_are_warnings() -> None:
    options, warnings = context_options(
        {
            "arch": "amd64",
            "memory": 512,
            "cpu": "qemu64",
            "machine": "pc",
            "no_kvm": True,
            "extra_options": ["-smp 2", "-device virtio-rng-pci"],
            "guestfs_size": 512,
            "frobnicate": "yes",
        }
    )
    assert (options.arch, options.memory, options.no_kvm) == ("amd64", 512, True)
    assert options.qemu_args() == [
        "-cpu",
        "qemu64",
        "-machine",
        "pc",
        "-smp",
        "2",
        "-device",
        "virtio-rng-pci",
    ]
    assert warnings == [
        "context 'frobnicate' is not a qemu setting lavamq knows: ignored",
        "context 'guestfs_size' has no effect here (the overlay travels in the initramfs or "
        "over the console)",
    ]
    with pytest.raises(JobError, match="context memory: must be a whole number"):
        context_options({"memory": "lots"})
    with pytest.raises(JobError, match="context extra_options: must be a list"):
        context_options({"extra_options": {"smp": 2}})


def test_auto_login_needs_what_lava_needs() -> None:
    login = auto_login(
        {
            "login_prompt": "login:",
            "username": "root",
            "password_prompt": "Password:",
            "password": "lava",
            "login_commands": ["sudo su"],
        }
    )
    assert login is not None and login.login_commands == ("sudo su",)
    assert login.steps() == [
        {"expect": "login:", "send": "root"},
        {"expect": "Password:", "send": "lava"},
    ]
    assert auto_login({}) is None
    with pytest.raises(JobError) as info:
        auto_login({"password_prompt": "Password:", "login_commands": "sudo su"})
    assert info.value.message == (
        "auto_login.login_prompt: is required; auto_login.username: is required; "
        "auto_login.password: is required with password_prompt; "
        "auto_login.login_commands: must be a list of commands"
    )


def fake_qemu(tmp_path: Path) -> Path:
    binary = tmp_path / "qemu-system-x86_64"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    return binary


def test_a_lava_shaped_boot_builds_the_jobs_command_line(tmp_path: Path) -> None:
    device = create_device(
        {
            "name": "qemu-01",
            "device_type": "qemu",
            "settings": {"runtime_dir": str(tmp_path), "qemu_binary": str(fake_qemu(tmp_path))},
        },
        tmp_path,
    )
    assert isinstance(device, QemuDevice)
    images = {}
    for name in ("kernel", "initrd", "extra"):
        images[name] = tmp_path / name
        images[name].write_bytes(b"x")
    overlay = tmp_path / "overlay"
    (overlay / "bin").mkdir(parents=True)
    warnings = device.prepare_boot(
        BootRequest(
            images=images,
            image_args={"kernel": KERNEL_ARG, "initrd": "-initrd {initrd}"},
            prompts=("root@lava-dut:~# ",),
            auto_login={"login_prompt": "login:", "username": "root"},
            context={"arch": "amd64", "memory": 256, "extra_options": ["-smp 1"], "vga": "std"},
        )
    )
    assert warnings == [
        "context 'vga' has no effect here (VMs run without a display)",
        "image 'extra' has no image_arg: not on the QEMU command line",
    ]
    assert device.prompts == ["root@lava-dut:~# "]
    assert device.login_steps == [{"expect": "login:", "send": "root"}]
    device.set_overlay(overlay)
    device.set_group("g", "qemu-01", ["qemu-01"])
    device.nic = VmNic(
        "g", "qemu-01", ipaddress.IPv4Interface("169.254.1.1/16"), "52:54:00:00:00:01", tmp_path
    )
    cmd = device.command_line(4321, "tcg")
    assert cmd[cmd.index("-m") + 1] == "256"
    assert cmd[cmd.index("-serial") + 1] == "tcp:127.0.0.1:4321,server=on,wait=on,nodelay=on"
    assert cmd[-8:] == [
        "-smp",
        "1",
        "-kernel",
        str(images["kernel"]),
        "-append",
        "console=ttyS0,115200 root=/dev/ram0 lavamq.hostname=qemu-01 lavamq.ip=169.254.1.1/16",
        "-initrd",
        # the overlay joined the job's initrd
        str(tmp_path / "qemu-01-initrd-with-overlay.cpio"),
    ]
    assert "-netdev" in cmd and cmd.index("-netdev") < cmd.index("-kernel")
    assert device.overlay_in_initrd
    assert str(images["extra"]) not in " ".join(cmd)
    # the next job without prompts or context gets the device's own again
    device.prepare_boot(BootRequest(images={"kernel": images["kernel"]}))
    assert device.prompts == ["lavamq-vm# "] and device.login_steps is None
    assert device.options.memory is None
