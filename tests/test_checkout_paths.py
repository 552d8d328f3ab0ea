"""The package finds the files of its checkout from where its modules live."""

from __future__ import annotations

from tests.conftest import REPO_ROOT
from trainchain.adapters.images import BUILD_SCRIPT
from trainchain.adapters.jenkins import default_jobs_dir


def test_the_checkouts_jobs_and_image_build_script_are_found_from_the_package() -> None:
    """`trainchain jenkins install/status` without --jobs read the checkout's jobs/, and
    `trainchain images build` runs its scripts/build-images.sh (a module moved one folder
    deeper once pointed both at src/)."""
    assert default_jobs_dir() == REPO_ROOT / "jobs"
    assert (default_jobs_dir() / "chain.yaml").is_file()
    assert BUILD_SCRIPT == REPO_ROOT / "scripts" / "build-images.sh"
    assert BUILD_SCRIPT.is_file()
