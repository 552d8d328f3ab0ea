"""The end of every `--help`: the exit statuses (core.status's one table) and examples.

`add_epilogs` walks the finished parser, so each command module only declares its
options; the examples of every command are here, one place a test parses them all.
"""

from __future__ import annotations

import argparse

from trainchain.core.status import exit_status_table

REPO = "https://git.example.com/team/models.git"

# Each command's examples, by its words after `trainchain` ("" is `trainchain` itself; a
# group without its own, such as `data`, shows the first example of each of its commands).
EXAMPLES: dict[str, tuple[str, ...]] = {
    "": (
        "trainchain run examples/eeg-motor-imagery          # the whole chain on a model folder",
        f"trainchain run {REPO} --ref main --subdir eeg",
        "trainchain serve --model eeg-motor-imagery --port 5005   # the champion over HTTP",
    ),
    "pull": (
        f"trainchain pull {REPO} --ref main",
        "trainchain pull /srv/git/models.git --properties trainchain.properties   # job 1",
    ),
    "detect": (
        "trainchain detect examples/cats-vs-dogs-cnn",
        "trainchain detect examples/eeg-motor-imagery --json",
    ),
    "train": ("trainchain train examples/eeg-motor-imagery --set band=8-13 --set C=0.5",),
    "tune": (
        "trainchain tune examples/eeg-motor-imagery --max-trials 10 --threshold 0.8",
        f"trainchain tune {REPO} --ref main --subdir eeg --promote   # job 4 under Jenkins",
    ),
    "promote": ("trainchain promote --model eeg-motor-imagery   # the latest chain's best model",),
    "rollback": ("trainchain rollback eeg-motor-imagery   # back to the previous champion",),
    "models": (
        "trainchain models eeg-motor-imagery",
        "trainchain models eeg-motor-imagery --json",
    ),
    "notify": (
        "trainchain notify --model eeg-motor-imagery   # the latest chain's email again",
        "trainchain notify --chain CHAIN_ID",
    ),
    "run": (
        "trainchain run examples/eeg-motor-imagery --executor docker",
        "trainchain run /srv/git/models.git --ref main --subdir eeg --data ~/eeg-data",
    ),
    "watchdog": (
        "trainchain watchdog --once   # one scan (a periodic Jenkins job)",
        "trainchain watchdog --interval 30   # supervise until stopped",
    ),
    "images list": ("trainchain images list   # each detection rule's image, built or not",),
    "images build": ("trainchain images build eeg sklearn", "trainchain images build all"),
    "data synth-eeg": (
        "trainchain data synth-eeg --out ~/.trainchain/data/eeg-synth-medium-288",
        "trainchain data synth-eeg --out /tmp/eeg --subjects 2 --difficulty hard --seed 3",
    ),
    "data tabular": (
        "trainchain data tabular --out ~/.trainchain/data/breast-cancer",
        "trainchain data tabular --out /tmp/iris --dataset iris",
    ),
    "data heldout": (
        "trainchain data heldout eeg-motor-imagery -n 1 --out epoch.json   # a /classify body",
        "trainchain data heldout eeg-motor-imagery -n 100 --out epochs.npy  # application/x-npy",
    ),
    "data drift-epochs": (
        "trainchain data drift-epochs --input heldout.json --shift gain --factor 1.5 "
        "--out gain.npy",
    ),
    "data capture": ("trainchain data capture /srv/captures --out new-data",),
    "drift": ("trainchain drift eeg-motor-imagery --input gain.npy   # exit 11: drifted",),
    "jenkins render": ("trainchain jenkins render --out /tmp/jobs   # offline",),
    "jenkins install": ("trainchain jenkins install --url http://127.0.0.1:8080",),
    "jenkins trigger": (
        f"trainchain jenkins trigger trainchain-pipeline --param REPOSITORY={REPO} --follow",
    ),
    "jenkins status": (
        "trainchain jenkins status",
        "trainchain jenkins status trainchain-4-tune --json",
    ),
    "hooks serve": (
        "trainchain hooks serve --port 8088 --executor local",
        "trainchain hooks serve --alert-token-file ~/alert-token "
        "--retrain eeg-motor-imagery=/srv/git/eeg.git@main",
    ),
    "hooks install": ("trainchain hooks install /srv/git/models.git --executor local",),
    "hooks post-receive": (
        "trainchain hooks post-receive --repo /srv/git/models.git   # reads the push on stdin",
    ),
    "hooks retrain": (
        "trainchain hooks retrain eeg-motor-imagery=/srv/git/eeg.git@main --reason nightly",
    ),
    "hooks status": ("trainchain hooks status", "trainchain hooks status RUN_ID"),
    "hooks drain": ("trainchain hooks drain",),
    "serve": (
        "trainchain serve --model eeg-motor-imagery --port 5005",
        "trainchain serve --model eeg-motor-imagery --monitoring-config examples/eeg-motor-imagery",
        "trainchain serve --model cats-vs-dogs-cnn --workers 2 --batch-max 32 --batch-wait 5",
    ),
}


class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions as argparse does; keeps the lines of an epilog as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _epilog(examples: tuple[str, ...]) -> str:
    lines = ["exit status:", *exit_status_table()]
    if examples:
        lines += ["", "examples:", *("  " + example for example in examples)]
    return "\n".join(lines)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's commands by name (none for a command without subcommands)."""
    return {
        name: sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, sub in action.choices.items()
    }


def add_epilogs(parser: argparse.ArgumentParser, command: str = "") -> tuple[str, ...]:
    """The exit statuses and the examples under ``parser`` and each of its commands; a
    command without a description gets its one-line help. Gives ``command``'s examples."""
    helps = {
        choice.dest: choice.help
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for choice in action._choices_actions
    }
    below: list[str] = []
    for name, sub in subcommands(parser).items():
        if sub.description is None:
            sub.description = helps.get(name)
        below += add_epilogs(sub, f"{command} {name}".strip())[:1]
    examples = EXAMPLES.get(command, tuple(below))
    parser.formatter_class = _Formatter
    parser.epilog = _epilog(examples)
    return examples
