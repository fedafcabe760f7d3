"""The issue's seed job in both formats, as parsed data (the unit tests change copies)."""

from __future__ import annotations

from typing import Any


def seed_2014() -> dict[str, Any]:
    return {
        "timeout": 900,
        "job_name": "simple multinode job",
        "logging_level": "INFO",
        "device_group": [
            {"role": "omap4", "count": 2, "device_type": "panda", "tags": ["usb-flash"]},
            {"role": "omap3", "count": 1, "device_type": "beaglexm", "tags": ["audio-loopback"]},
        ],
        "actions": [
            {
                "command": "deploy_linaro_image",
                "parameters": {"image": "file:///images/panda.img.gz", "role": "omap4"},
            },
            {
                "command": "deploy_linaro_image",
                "parameters": {"image": "file:///images/beagle.img.gz", "role": "omap3"},
            },
            {
                "command": "lava_test_shell",
                "parameters": {
                    "testdef_repos": [
                        {
                            "git-repo": "git://git.linaro.org/qa/test-definitions.git",
                            "testdef": "ubuntu/smoke-tests-basic.yaml",
                        }
                    ],
                    "timeout": 1800,
                },
            },
            {
                "command": "submit_results",
                "parameters": {"server": "http://localhost/RPC2/", "stream": "/anonymous/x/"},
            },
        ],
    }


def seed_yaml() -> dict[str, Any]:
    return {
        "job_name": "simple multinode job",
        "visibility": "public",
        "timeouts": {"job": {"hours": 1}, "action": {"minutes": 15}},
        "protocols": {
            "lava-multinode": {
                "roles": {
                    "omap4": {"device_type": "panda", "count": 2, "tags": ["usb-flash"]},
                    "omap3": {"device_type": "beaglexm", "count": 1, "tags": ["audio-loopback"]},
                },
                "timeout": {"minutes": 15},
            }
        },
        "actions": [
            {
                "deploy": {
                    "role": ["omap4"],
                    "to": "tmpfs",
                    "images": {"rootfs": {"url": "file:///images/panda.img.gz"}},
                }
            },
            {
                "deploy": {
                    "role": ["omap3"],
                    "to": "tmpfs",
                    "images": {"rootfs": {"url": "file:///images/beagle.img.gz"}},
                }
            },
            {"boot": {"role": ["omap4", "omap3"], "method": "minimal", "prompts": ["# "]}},
            {
                "test": {
                    "role": ["omap4", "omap3"],
                    "timeout": {"minutes": 30},
                    "definitions": [
                        {
                            "from": "git",
                            "repository": "git://git.linaro.org/qa/test-definitions.git",
                            "path": "ubuntu/smoke-tests-basic.yaml",
                            "name": "smoke-tests-basic",
                        }
                    ],
                }
            },
        ],
    }
