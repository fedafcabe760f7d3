"""``deploy-image``: fetch every image of a deploy action into the sub-job's work dir."""

from __future__ import annotations

import logging
from typing import Any

from dispatcher.action import Action, JobContext, Pipeline, RetryAction
from dispatcher.download import fetch_image, validate_image
from schemas.deploys import NO_URL_DEPLOYS, deploy_refused, nothing_to_deploy

log = logging.getLogger(__name__)


class DownloadAction(Action):
    """``file-download`` / ``http-download``: one image, decompressed and verified."""

    description = "download one image, decompress it on the fly, verify its checksum"

    def __init__(self, image_name: str, image: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_name = image_name
        self.image = dict(image)
        scheme = str(image.get("url", "")).split("://", 1)[0]
        self.name = {
            "file": "file-download",
            "http": "http-download",
            "https": "http-download",
        }.get(scheme, "download")

    def validate(self, ctx: JobContext) -> list[str]:
        """The image's URL, compression and checksums must be usable."""
        return super().validate(ctx) + [
            f"{self.name}: {p}" for p in validate_image(self.image_name, self.image)
        ]

    def run(self, connection: Any, deadline: float | None, ctx: JobContext) -> Any:
        """Fetch, decompress and verify the image into the work dir."""
        images_dir = ctx.workdir / "images"
        comp = self.image.get("compression")
        dest = images_dir / self.image_name
        ctx.log.info(
            f"{self.image_name}: fetching {self.image['url']}"
            + (f" ({comp}-compressed)" if comp else "")
        )
        got = fetch_image(
            self.image["url"],
            dest,
            compression=comp,
            md5sum=self.image.get("md5sum"),
            sha256sum=self.image.get("sha256sum"),
            deadline=deadline,
            progress=ctx.log.info,
            name=self.image_name,
        )
        for key in ("md5sum", "sha256sum"):
            if self.image.get(key):
                ctx.log.info(f"{self.image_name}: {key} {getattr(got, key)} verified")
        ctx.data.setdefault("images", {})[self.image_name] = str(got.path)
        if self.image.get("image_arg"):
            # LAVA's QEMU command line piece for this image (``-kernel {kernel}``)
            ctx.data.setdefault("image_args", {})[self.image_name] = str(self.image["image_arg"])
        return connection

    def cleanup(self, ctx: JobContext) -> None:
        """Remove a partly downloaded image."""
        part = ctx.workdir / "images" / f"{self.image_name}.part"
        part.unlink(missing_ok=True)

    def describe(self) -> dict[str, Any]:
        """The action as data, with the image it fetches."""
        out = super().describe()
        out["image"] = self.image_name
        return out


class DeployImagesAction(Action):
    """``deploy-image``: every image named in the deploy action."""

    name = "deploy-image"
    description = "download, decompress and verify the job's images"

    def __init__(self, parameters: dict[str, Any], timeout: float | None = None) -> None:
        super().__init__(timeout=timeout, parameters=parameters)
        images = parameters.get("images") or {}
        self.images: dict[str, Any] = images if isinstance(images, dict) else {}
        self.pipeline = Pipeline(
            [
                RetryAction(DownloadAction(name, dict(img)), name="download-retry")
                for name, img in sorted(self.images.items())
            ]
        )

    @property
    def method(self) -> str:
        """``deploy: to:`` as written ("" when none)."""
        return str(self.parameters.get("to") or "")

    def validate(self, ctx: JobContext) -> list[str]:
        """A deploy must name at least one image."""
        problems = super().validate(ctx)
        if self.images:
            return problems
        kind = type(ctx.device).device_type  # a local board standing in for another is local
        if self.method in NO_URL_DEPLOYS:
            why = deploy_refused(self.method, kind)
            if why:
                problems.append(
                    f"{self.name}: to: {self.method} is not supported on device type "
                    f"{ctx.device.device_type}: {why}"
                )
        else:
            problems.append(f"{self.name}: no images to deploy (parameters.images is empty)")
        return problems

    def run(self, connection: Any, deadline: float | None, ctx: JobContext) -> Any:
        """Fetch every image; a deploy without images (honoured, as validate checked)
        fetches nothing and says so."""
        if isinstance(self.parameters.get("os"), str):
            # the board's distribution (LAVA's deployment data): install: deps-<os>
            ctx.data["os"] = self.parameters["os"]
        if not self.images:
            # a deploy without images (to: docker, lxc, overlay) the device honours
            image = self.parameters.get("image")
            name = image.get("name") if isinstance(image, dict) else image
            detail = f"image {name}" if name else ""
            if type(ctx.device).device_type == "local":
                ctx.log.info(nothing_to_deploy(self.method, detail))
            else:
                ctx.log.info(
                    f"deploy to {self.method}: nothing to fetch; the overlay is installed "
                    "by the test action"
                )
            return connection
        return super().run(connection, deadline, ctx)
