"""Loading job files: the seed examples, YAML/JSON equivalence, normalisation, round trips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas.errors import JobError
from schemas.job import (
    FORMAT_2014,
    FORMAT_YAML,
    JobPlan,
    JobValidationError,
    load_job,
    load_job_file,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SEED_JSON = EXAMPLES / "seed-simple-multinode.json"
SEED_YAML = EXAMPLES / "seed-simple-multinode.yaml"
NETPERF_JSON = EXAMPLES / "seed-netperf-timeouts.json"


def _without_format_and_names(plan: JobPlan) -> dict[str, Any]:
    """The plan minus what legitimately differs between formats (format, names as written)."""
    data = plan.to_dict()
    data.pop("format")
    for action in data["actions"]:
        action.pop("name")
    for sub in data["subjobs"]:
        for action in sub["actions"]:
            action.pop("name")
    return data


def test_seed_example_gives_three_subjobs() -> None:
    plan = load_job_file(SEED_JSON)
    assert plan.format == FORMAT_2014
    assert plan.job_name == "simple multinode job"
    assert [(s.role, s.index, s.device_type, s.tags) for s in plan.subjobs] == [
        ("omap4", 0, "panda", ("usb-flash",)),
        ("omap4", 1, "panda", ("usb-flash",)),
        ("omap3", 0, "beaglexm", ("audio-loopback",)),
    ]
    assert [(r.name, r.count) for r in plan.roles] == [("omap4", 2), ("omap3", 1)]
    # each role: its own deploy, the implicit boot made explicit, the shared test
    omap4 = plan.subjob("omap4", 0)
    assert [(a.kind, a.name) for a in omap4.actions] == [
        ("deploy", "deploy_linaro_image"),
        ("boot", "boot_linaro_image"),
        ("test", "lava_test_shell"),
    ]
    assert (
        omap4.actions[0]
        .parameters["images"]["image"]["url"]
        .endswith("panda-raring_developer_20130529-347.img.gz")
    )
    omap3 = plan.subjob("omap3", 0)
    assert (
        omap3.actions[0]
        .parameters["images"]["image"]["url"]
        .endswith("beagle-ubuntu-desktop.img.gz")
    )
    assert omap3.actions[1].roles == ("omap3",)
    assert [a.index for a in plan.actions] == [0, 1, 2, 3, 4]


def test_seed_timeouts_and_test_definition() -> None:
    plan = load_job_file(SEED_JSON)
    assert plan.timeouts.action == 900
    assert plan.timeouts.multinode == 900
    assert plan.timeouts.job is None
    assert plan.timeouts.connection is None
    test = plan.actions[-1]
    assert test.timeout == 1800
    assert test.roles == ()
    assert test.parameters == {
        "definitions": [
            {
                "from": "git",
                "repository": "git://git.linaro.org/qa/test-definitions.git",
                "path": "ubuntu/smoke-tests-basic.yaml",
                "name": "smoke-tests-basic",
                "revision": None,
                "parameters": {},
            }
        ]
    }
    deploy = plan.actions[0]
    assert deploy.parameters["images"]["image"]["compression"] == "gz"
    assert deploy.timeout == 900


def test_yaml_and_json_seed_give_the_same_plan() -> None:
    from_json = load_job_file(SEED_JSON)
    from_yaml = load_job_file(SEED_YAML)
    assert from_yaml.format == FORMAT_YAML
    assert _without_format_and_names(from_json) == _without_format_and_names(from_yaml)


def test_netperf_boots_each_role_before_its_first_test() -> None:
    plan = load_job_file(NETPERF_JSON)
    client = plan.subjob("client", 0)
    server = plan.subjob("server", 0)
    assert [a.kind for a in client.actions] == ["deploy", "boot", "test", "submit"]
    assert [a.kind for a in server.actions] == ["deploy", "boot", "test", "submit"]
    assert client.actions[2].timeout == 2400
    assert server.actions[2].timeout == 1800
    assert client.actions[1].roles == ("client",)


def test_implicit_boot_for_all_roles_when_deploy_is_for_all() -> None:
    job = {
        "timeout": 60,
        "job_name": "all",
        "device_group": [
            {"role": "a", "count": 1, "device_type": "kvm"},
            {"role": "b", "count": 1, "device_type": "kvm"},
        ],
        "actions": [
            {"command": "deploy_linaro_image", "parameters": {"image": "http://x/i.img.xz"}},
            {"command": "lava_test_shell", "parameters": {"testdef_urls": ["http://x/t.yaml"]}},
            {"command": "lava_test_shell", "parameters": {"testdef_urls": ["http://x/u.yaml"]}},
        ],
    }
    plan = load_job(json.dumps(job))
    assert [(a.kind, a.roles, a.index) for a in plan.actions] == [
        ("deploy", (), 0),
        ("boot", (), 1),
        ("test", (), 2),
        ("test", (), 3),
    ]
    assert plan.actions[0].parameters["images"]["image"]["compression"] == "xz"
    assert plan.actions[2].parameters["definitions"][0] == {
        "from": "url",
        "repository": "http://x/t.yaml",
        "path": None,
        "name": "t",
        "revision": None,
        "parameters": {},
    }


def test_explicit_boot_is_not_doubled() -> None:
    job = {
        "timeout": 60,
        "device_group": [{"role": "a", "device": "qemu01"}],
        "actions": [
            {"command": "deploy_linaro_image", "parameters": {"image": "file:///i.img"}},
            {"command": "boot_linaro_image", "parameters": {"options": ["x"]}},
            {"command": "lava_test_shell", "parameters": {"testdef_urls": ["file:///t.yaml"]}},
        ],
    }
    plan = load_job(json.dumps(job), source="jobs/single.json")
    assert [a.kind for a in plan.actions] == ["deploy", "boot", "test"]
    assert plan.actions[1].parameters == {"options": ["x"]}
    assert plan.actions[0].parameters["images"]["image"]["compression"] is None
    assert plan.roles[0].device == "qemu01"
    assert plan.roles[0].device_type is None
    assert plan.job_name == "single"


def test_deploy_linaro_kernel_gives_one_image_per_key() -> None:
    job = {
        "timeout": 60,
        "device_group": [{"role": "a", "device_type": "beaglebone-black"}],
        "actions": [
            {
                "command": "deploy_linaro_kernel",
                "parameters": {
                    "kernel": "http://x/zImage",
                    "ramdisk": "http://x/initrd.gz",
                    "dtb": "http://x/board.dtb",
                    "rootfs": "http://x/rootfs.ext4.bz2",
                    "bootloadertype": "u_boot",
                },
            },
        ],
    }
    deploy = load_job(json.dumps(job)).actions[0]
    assert deploy.parameters == {
        "images": {
            "kernel": {"url": "http://x/zImage", "compression": None},
            "ramdisk": {"url": "http://x/initrd.gz", "compression": "gz"},
            "dtb": {"url": "http://x/board.dtb", "compression": None},
            "rootfs": {"url": "http://x/rootfs.ext4.bz2", "compression": "bz2"},
        },
        "bootloadertype": "u_boot",
    }


REAL_WORLD_YAML = """\
device_type_comment: ignored below
job_name: lxc-ssh-guest multinode
visibility: public
priority: high
metadata:
  source: https://git.example.org/jobs
  build: 42
notify:
  criteria:
    status: finished
  recipients:
  - to:
      method: email
      email: someone@example.org
timeouts:
  job:
    hours: 2
  action:
    minutes: 10
  connection:
    minutes: 2
  actions:
    lava-test-shell:
      minutes: 40
    auto-login-action:
      minutes: 4
protocols:
  lava-multinode:
    roles:
      server:
        device_type: beaglebone-black
        count: 1
        tags: [usb-eth]
        essential: true
        context:
          extra_kernel_args: console=ttyO0
        timeout:
          minutes: 10
      client:
        device_type: qemu
        count: 3
        is_slave: false
    timeout:
      minutes: 6
actions:
- deploy:
    role: [server]
    namespace: bbb
    to: tftp
    os: debian
    kernel:
      url: https://images.example.org/zImage
      type: zimage
    ramdisk:
      url: https://images.example.org/initramfs.cpio.gz
      compression: gz
    dtb:
      url: https://images.example.org/am335x-boneblack.dtb
    nfsrootfs:
      url: https://images.example.org/rootfs.tar.xz
      compression: xz
      sha256sum: 0123abcd
    failure_retry: 2
- deploy:
    role: [client]
    namespace: vm
    to: tmpfs
    images:
      rootfs:
        image_arg: -drive format=raw,file={rootfs}
        url: https://images.example.org/stretch.img.zst
- boot:
    role: [server]
    namespace: bbb
    method: u-boot
    commands: nfs
    auto_login:
      login_prompt: 'login:'
      username: root
    prompts:
    - 'root@debian:~#'
    timeout:
      minutes: 5
- boot:
    role: [client]
    namespace: vm
    method: qemu
    media: tmpfs
    prompts: 'root@debian:'
- test:
    role: [server, client]
    namespace: bbb
    timeout:
      minutes: 50
    definitions:
    - repository: https://git.example.org/test-definitions.git
      from: git
      path: automated/linux/smoke/smoke.yaml
      name: smoke
      revision: v1.2
      parameters:
        SKIP_INSTALL: 'true'
    - repository:
        metadata:
          format: Lava-Test Test Definition 1.0
          name: sync
          description: sync everyone
        run:
          steps:
          - lava-sync ready
      from: inline
      path: inline/sync.yaml
      name: sync
- command:
    role: [server]
    name: pdu_reboot
"""


def test_real_world_lava_yaml_validates() -> None:
    plan = load_job(REAL_WORLD_YAML.replace("device_type_comment: ignored below\n", ""))
    assert plan.priority == 100
    assert plan.timeouts.job == 7200
    assert plan.timeouts.action == 600
    assert plan.timeouts.connection == 120
    assert plan.timeouts.multinode == 360
    assert [(s.role, s.index) for s in plan.subjobs] == [
        ("server", 0),
        ("client", 0),
        ("client", 1),
        ("client", 2),
    ]
    assert plan.role("server").essential is True
    assert plan.role("server").tags == ("usb-eth",)
    deploy = plan.actions[0]
    assert deploy.parameters["to"] == "tftp"
    assert deploy.parameters["images"]["kernel"] == {
        "url": "https://images.example.org/zImage",
        "compression": None,
        "type": "zimage",
    }
    assert deploy.parameters["images"]["nfsrootfs"]["sha256sum"] == "0123abcd"
    assert deploy.parameters["namespace"] == "bbb"
    assert deploy.timeout == 600
    client_deploy = plan.actions[1]
    assert client_deploy.parameters["images"]["rootfs"]["compression"] == "zst"
    assert plan.actions[2].timeout == 300
    assert plan.actions[3].parameters["prompts"] == "root@debian:"
    test = plan.actions[4]
    assert test.timeout == 3000
    assert test.roles == ("server", "client")
    inline = test.parameters["definitions"][1]
    assert inline["from"] == "inline"
    assert inline["repository"]["run"]["steps"] == ["lava-sync ready"]
    assert test.parameters["definitions"][0]["parameters"] == {"SKIP_INSTALL": "true"}
    command = plan.actions[5]
    assert (command.kind, command.parameters) == ("command", {"name": "pdu_reboot"})
    assert command.timeout == 600
    # the client never runs the server's command
    assert [a.kind for a in plan.subjob("client", 1).actions] == ["deploy", "boot", "test"]


def test_timeouts_actions_apply_by_kind() -> None:
    text = REAL_WORLD_YAML.replace("device_type_comment: ignored below\n", "").replace(
        "    role: [server, client]\n    namespace: bbb\n    timeout:\n      minutes: 50\n",
        "    role: [server, client]\n    namespace: bbb\n",
    )
    plan = load_job(text)
    assert plan.actions[4].timeout == 2400


def test_defaults_when_yaml_says_nothing() -> None:
    text = """
job_name: minimal
protocols:
  lava-multinode:
    roles:
      host: {device_type: qemu}
actions:
- boot: {}
- test:
    definitions:
    - {from: url, repository: 'https://x/smoke.yaml'}
"""
    plan = load_job(text)
    assert plan.timeouts == type(plan.timeouts)(
        job=None, action=1800.0, multinode=900.0, connection=None
    )
    assert plan.priority == 50
    assert plan.roles[0].count == 1
    assert plan.actions[1].parameters["definitions"][0]["name"] == "smoke"


@pytest.mark.parametrize("path", [SEED_JSON, SEED_YAML, NETPERF_JSON])
def test_plan_round_trips_through_json(path: Path) -> None:
    plan = load_job_file(path)
    wire = json.loads(json.dumps(plan.to_dict()))
    again = JobPlan.from_dict(wire)
    assert again == plan
    assert again.to_dict() == plan.to_dict()


def test_subjob_dict_is_json_safe_and_complete() -> None:
    plan = load_job_file(SEED_JSON)
    body = plan.subjob_dict("omap4", 1)
    assert json.loads(json.dumps(body)) == body
    assert body["job_name"] == "simple multinode job"
    assert body["role"] == "omap4"
    assert body["index"] == 1
    assert body["device_type"] == "panda"
    assert body["tags"] == ["usb-flash"]
    assert body["timeouts"] == {
        "job": None,
        "action": 900.0,
        "multinode": 900.0,
        "connection": None,
    }
    assert [a["kind"] for a in body["actions"]] == ["deploy", "boot", "test"]
    with pytest.raises(KeyError):
        plan.subjob_dict("omap3", 1)


def test_validation_error_is_a_job_error_listing_every_problem() -> None:
    with pytest.raises(JobValidationError) as info:
        load_job('{"timeout": -1, "device_group": [], "actions": []}', source="bad.json")
    err = info.value
    assert isinstance(err, JobError)
    assert err.error_type == "job"
    assert err.problems == [
        "timeout: must be a positive number of seconds",
        "device_group: must list at least one role",
        "actions: must list at least one action",
    ]
    text = str(err)
    assert text.startswith("bad.json: invalid job file (3 problems)")
    for problem in err.problems:
        assert problem in text


def test_bytes_and_bom_are_accepted() -> None:
    data = b"\xef\xbb\xbf" + SEED_JSON.read_bytes()
    assert len(load_job(data).subjobs) == 3


def test_unreadable_file_is_a_validation_error(tmp_path: Path) -> None:
    with pytest.raises(JobValidationError) as info:
        load_job_file(tmp_path / "missing.yaml")
    assert info.value.problems == ["file: cannot read it (No such file or directory)"]
