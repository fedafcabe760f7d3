"""Deploys that name no image to fetch (LAVA's ``to: docker``, ``to: lxc``, ``to:
overlay``), and which of lavamq's device types can honour them.

LAVA picks a deploy's strategy from ``to:`` and the device's deploy methods:
``docker`` needs a docker device (``image:`` names the container image),
``overlay`` puts the test overlay on a board that already runs its OS, and
``lxc`` was a container on the dispatcher (current LAVA dropped it). None of
them downloads anything. A ``local`` board is the dispatcher host's own shell:
it deploys nothing for any of them (its job log says so) and the test shell
runs there; a ``serial`` board runs its own OS, so ``overlay`` is honoured
(the overlay goes with the test action) and the others are not; a ``qemu``
board boots the job's images, so it needs a deploy with images. The job file
checks (``schemas.job_yaml``) refuse a deploy a role's device type cannot do,
and the dispatcher checks the board's own type before its sub-job starts.
"""

from __future__ import annotations

#: ``deploy: to:`` values that name no image to download
NO_URL_DEPLOYS = ("docker", "lxc", "overlay")

#: device type → the no-URL deploys it honours, and why it cannot do the others
HONOURED: dict[str, tuple[frozenset[str], str]] = {
    "local": (frozenset(NO_URL_DEPLOYS), ""),
    "serial": (
        frozenset({"overlay"}),
        "a serial board runs its own OS: only 'to: overlay' (the overlay goes with the "
        "test action), not a container",
    ),
    "qemu": (
        frozenset(),
        "a qemu board boots the job's own images: deploy them with 'to: tmpfs' and "
        "'images: {kernel: {url: ...}, ...}'",
    ),
}


def deploy_refused(method: str, device_type: str) -> str:
    """Why ``device_type`` cannot do a ``to: method`` deploy that has no images ("" when
    it can, or when the type is not one of lavamq's own: its board decides)."""
    if method not in NO_URL_DEPLOYS or device_type not in HONOURED:
        return ""
    honoured, why = HONOURED[device_type]
    return "" if method in honoured else why


def nothing_to_deploy(method: str, detail: str) -> str:
    """The job-log line of a local board for a deploy without images."""
    what = f"deploy to {method}" + (f" ({detail})" if detail else "")
    return (
        f"{what}: a local board is the dispatcher host's shell: nothing is deployed, "
        "the test shell runs on the host"
    )
