"""The one size parser, shared by `serve --max-body` and `hooks serve --max-body`."""

from __future__ import annotations

import pytest

from trainchain.core.errors import ConfigError
from trainchain.core.sizes import human_size, parse_size, rounded_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1048576),
        ("100B", 100),
        ("5K", 5120),
        ("5k", 5120),
        ("5KB", 5120),
        ("5kb", 5120),
        ("5KiB", 5120),
        ("5Ki", 5120),
        ("512K", 512 * 1024),
        ("1.5M", 1536 * 1024),
        ("16MiB", 16 << 20),
        (" 16 MiB ", 16 << 20),
        ("2G", 2 << 30),
        ("1GiB", 1 << 30),
    ],
)
def test_units_are_powers_of_1024(text: str, size: int) -> None:
    """K, M, G with or without B or iB, any case, are 1024, 1024**2, 1024**3 bytes."""
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "5T", "-5K", "5 K B", "K5", "5KiBs"])
def test_an_unreadable_size_is_refused_naming_the_option(text: str) -> None:
    """Anything but a number with K, M or G is a ConfigError that quotes it and the flag."""
    with pytest.raises(ConfigError, match=f"--max-body {text!r} is not a size"):
        parse_size(text)


def test_a_size_below_the_minimum_is_refused() -> None:
    """``at_least`` is the smallest size accepted; the message gives both."""
    assert parse_size("1K", at_least=1024) == 1024
    with pytest.raises(
        ConfigError, match=r"--max-body '1000' is 1000 bytes: expected at least 1 KiB"
    ):
        parse_size("1000", at_least=1024)


def test_human_size_is_the_largest_whole_binary_unit() -> None:
    """16 MiB, 5 KiB, 1536 KiB, and plain bytes when no unit divides the size."""
    assert human_size(16 << 20) == "16 MiB"
    assert human_size(5120) == "5 KiB"
    assert human_size(1536 * 1024) == "1536 KiB"
    assert human_size(1000) == "1000 bytes"
    assert human_size(1) == "1 byte"


def test_rounded_size_gives_three_digits_in_the_largest_unit_reached() -> None:
    """Estimates (the 413's size of an epoch) print as 3 significant digits: 384 KiB, 64.5 KiB."""
    assert rounded_size(393_000) == "384 KiB"
    assert rounded_size(66_000) == "64.5 KiB"
    assert rounded_size(20 * 1024 * 1024 + 1) == "20 MiB"
    assert rounded_size(1536 * 1024) == "1.5 MiB"
    assert rounded_size(1000) == "1000 bytes"


def test_hooks_serve_reads_5k_as_5120_bytes() -> None:
    """`hooks serve --max-body 5K` is 5120 bytes, as for `serve` (one parser)."""
    from trainchain.cli.main import build_parser

    assert build_parser().parse_args(["hooks", "serve", "--max-body", "5K"]).max_body == 5120


def test_hooks_serve_refuses_an_unreadable_size_in_argparse_words(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bad `hooks serve --max-body` is a usage error naming the flag once."""
    from trainchain.cli.main import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["hooks", "serve", "--max-body", "lots"])
    assert exit_info.value.code == 2
    assert "argument --max-body: 'lots' is not a size" in capsys.readouterr().err
