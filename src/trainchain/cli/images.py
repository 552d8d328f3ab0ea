"""`trainchain images`: the training images, listed and built."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from trainchain.cli.common import out


def cmd_images_list(args: argparse.Namespace) -> int:
    from trainchain.adapters.images import list_images
    from trainchain.core.config import load_config
    from trainchain.core.detect import effective_rules

    detection = load_config(args.path).model.detection if args.path else None
    infos = list_images(effective_rules(detection))
    width = max(len(i.image) for i in infos)
    out(f"{'family':<10} {'image':<{width}}  status")
    for info in infos:
        status = (
            f"built {info.created}, {info.size_mb:.0f} MB"
            if info.present
            else "missing: run scripts/build-images.sh " + info.build_name
        )
        out(f"{info.family:<10} {info.image:<{width}}  {status}")
    return 0


def cmd_images_build(args: argparse.Namespace) -> int:
    from trainchain.adapters.images import build

    return build(args.families)


def register(
    add: Callable[[str, Any, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    images = add("images", lambda a: 0, "training images: list and build")
    isub = images.add_subparsers(dest="images_command", required=True, metavar="COMMAND")
    sp = isub.add_parser(
        "list", parents=[common], help="each detection rule's image and whether it is built"
    )
    sp.set_defaults(func=cmd_images_list)
    sp.add_argument("path", nargs="?", help="a model repository (its detection rules count)")
    sp = isub.add_parser(
        "build", parents=[common], help="build training images (scripts/build-images.sh)"
    )
    sp.set_defaults(func=cmd_images_build)
    sp.add_argument(
        "families", nargs="*", help="eeg, sklearn, tensorflow or all (default: eeg sklearn)"
    )
