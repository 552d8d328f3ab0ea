"""Rendering the chain's email (pure) and its plot: no server, no files."""

from __future__ import annotations

import email
import email.policy
import json
import struct
import subprocess
import sys
from email.message import EmailMessage

import pytest

from tests.sample_reports import confirmed, failed, not_reached, report, search_only
from trainchain.core.notify import render, subject
from trainchain.core.plots import metric_plot
from trainchain.core.redaction import redact
from trainchain.core.report import ChainReport, TrialSummary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAKE_PNG = PNG_MAGIC + b"not really a picture"


def mail(r: ChainReport, plot: bytes | None = None) -> EmailMessage:
    return render(r, sender="trainchain@example.org", recipients=["ml@example.org"], plot_png=plot)


def plain(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert isinstance(part, EmailMessage)
    text = part.get_content()
    assert isinstance(text, str)
    return text


def html(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("html",))
    assert isinstance(part, EmailMessage)
    text = part.get_content()
    assert isinstance(text, str)
    return text


def reparsed(msg: EmailMessage) -> EmailMessage:
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


# --- subjects ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("r", "expected"),
    [
        (
            report(),
            "[trainchain] eeg-motor-imagery: goal reached (val_accuracy 0.84 >= 0.8), "
            "v3 is champion",
        ),
        (
            report(became_champion=False),
            "[trainchain] eeg-motor-imagery: goal reached (val_accuracy 0.84 >= 0.8), "
            "v3 is challenger, champion kept",
        ),
        (
            report(registry_version=None, became_champion=False),
            "[trainchain] eeg-motor-imagery: goal reached (val_accuracy 0.84 >= 0.8), "
            "not registered",
        ),
        (
            not_reached(),
            "[trainchain] eeg-motor-imagery: goal NOT reached "
            "(best val_accuracy 0.84 < 0.999 after 4 trials)",
        ),
        (
            not_reached(
                best_value=None, best_trial=None, trials=(TrialSummary(0, "FAIL", None, {}),)
            ),
            "[trainchain] eeg-motor-imagery: goal NOT reached (no completed trial after 1 trial)",
        ),
        (
            failed(),
            "[trainchain] eeg-motor-imagery: FAILED: TrainingError: trial 4 exited with "
            "status 137 (killed: out of memory)",
        ),
        (
            failed(error=None, status="running"),
            "[trainchain] eeg-motor-imagery: FAILED: the chain stopped before it finished "
            "(its report still says running)",
        ),
    ],
    ids=[
        "champion",
        "challenger",
        "unregistered",
        "not-reached",
        "nothing-completed",
        "failed",
        "still-running",
    ],
)
def test_subject_states_the_outcome_in_one_line(r: ChainReport, expected: str) -> None:
    """The subject gives outcome, goal comparison and registry result, as specified."""
    assert subject(r) == expected
    assert mail(r)["Subject"] == expected


def test_subject_for_minimize_goals_uses_the_right_comparison() -> None:
    """A minimised metric reads `<=` when reached and `>` when not."""
    r = report(goal_metric="val_loss", direction="minimize", threshold=0.3, best_value=0.25)
    assert "(val_loss 0.25 <= 0.3)" in subject(r)
    r = not_reached(goal_metric="val_loss", direction="minimize", threshold=0.3, best_value=0.41)
    assert "(best val_loss 0.41 > 0.3 after 4 trials)" in subject(r)


def test_subject_shows_enough_digits_to_tell_a_near_miss() -> None:
    """0.79996 against 0.8 is not rounded into `0.8 < 0.8`."""
    assert "0.79996 < 0.8 " in subject(not_reached(threshold=0.8, best_value=0.79996))


def test_a_multiline_error_cannot_inject_headers() -> None:
    """Newlines in the error or the model name stay out of the headers."""
    msg = mail(failed(error="boom\nBcc: attacker@example.org", model_name="m\r\nX-Evil: 1"))
    parsed = reparsed(msg)
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None
    assert parsed["Subject"] == "[trainchain] m X-Evil: 1: FAILED: boom"  # first error line only
    assert "Bcc: attacker@example.org" in plain(parsed)  # the whole error is in the body


# --- the success email ------------------------------------------------------------------


def test_success_body_gives_every_fact_a_person_needs() -> None:
    """Model, repo, commit, goal, values, budget, params, registry, where, Jenkins, trials."""
    body = plain(mail(report()))
    for fact in (
        "Goal reached: val_accuracy 0.84 >= 0.8.",
        "Best val_accuracy reached: 0.84 by trial #4 (held-out test: 0.82).",
        "Model:       eeg-motor-imagery",
        "Repository:  https://git.example.org/lab/eeg-motor-imagery.git",
        "Commit:      9f1c2e3d4b5a69788796a5b4c3d2e1f0a9b8c7d6",
        "Goal:        val_accuracy, maximize, threshold 0.8",
        "Trials:      4 of 10 used",
        "Elapsed:     12m 34s",
        "C = 3.5",
        "kernel = rbf",
        "Registry version:  3",
        "Champion:          yes",
        "Promotion:         test_accuracy 0.82 beats champion v2 (0.79) by more than 0.01",
        "Model URI:          models:/eeg-motor-imagery/3",
        "Tracking URI:       sqlite:////root/.trainchain/mlflow.db",
        "MLflow run:         run3",
        "Jenkins build:      http://jenkins.example.org/job/trainchain-notify/17/",
    ):
        assert fact in body, fact
    assert "Last log lines" not in body


def test_confirmed_success_shows_each_figure_with_its_uncertainty() -> None:
    """Today's success email: the confirmed bound in the subject and first line; the search
    score with its fold spread, the confirmation with its bound, the held-out test with its
    95% interval; how to read them; and both promotion tests with p-values and meaning."""
    r = confirmed()
    bound = r.confirmation.bound if r.confirmation else None
    assert bound is not None and 0.8 < bound < r.confirmation.estimate.value  # type: ignore[union-attr]
    assert subject(r) == (
        f"[trainchain] eeg-motor-imagery: goal reached and confirmed (val_accuracy lower bound "
        f"{bound:.4g} >= 0.8), v3 is champion"
    )
    body = plain(mail(r))
    assert body.startswith(
        f"Goal reached and confirmed: val_accuracy lower bound {bound:.4g} >= 0.8"
    )
    for fact in (
        "Verdict:        val_accuracy >= 0.8: reached and confirmed",
        "Search:         0.8400 +- 0.0418 (sd of 5 folds), trial #4",
        "(sd of 20 folds) on fresh folds; lower 97.5% bound",
        "Held-out test:  0.8750 (21/24; 95% CI 0.68-0.97)",
        "Warm start:     12 finished trials of 2 earlier studies",
        "How to read these figures",
        "Against chance: held-out accuracy 0.875 (21/24, 95% CI 0.68-0.97) against the "
        "majority-class rate 0.50: one-sided binomial test p < 0.001.",
        "would get 21 or more of 24 right with probability p",
        "Against the champion: on the same 24 held-out examples the candidate is right where "
        "champion v2 is wrong on 7 and wrong where it is right on 1 (21 vs 15 right): "
        "McNemar's exact test that it is better, one-sided p = 0.035.",
        "it would win 7 or more of those 8 with probability p. p is at or below alpha 0.05: "
        "it is significantly better.",
    ):
        assert fact in body, fact
    assert "McNemar" in html(mail(r)) and "95% CI 0.68-0.97" in html(mail(r))


def test_search_only_is_not_a_success_and_says_why() -> None:
    """Reached on the search's validation only: the subject says NOT confirmed with both
    figures; the body says nothing was promoted and why."""
    r = search_only()
    assert subject(r) == (
        "[trainchain] eeg-motor-imagery: goal NOT confirmed (val_accuracy 0.84 >= 0.8 on the "
        "search's validation only; lower bound 0.6196 on fresh folds)"
    )
    body = plain(mail(r))
    assert body.startswith(
        "The goal (val_accuracy >= 0.8) was reached on the search's validation only, not "
        "confirmed on fresh folds"
    )
    assert "reached on the search's validation only, not confirmed" in body
    assert "lower 97.5% bound 0.6196 misses 0.8" in body
    assert "Held-out test:  0.8200 (20/24; 95% CI 0.63-0.95)" in body
    assert "Nothing was promoted" in body


def test_success_body_has_a_row_per_trial_with_state_and_value() -> None:
    """The trial table lists every trial's number, state and value, and marks the best."""
    lines = plain(mail(report())).splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.strip()[:1] == "#"}
    assert rows["#1"][:4] == ["#1", "COMPLETE", "0.71", "0.7"]
    assert rows["#2"][:3] == ["#2", "FAIL", "n/a"]
    assert rows["#3"][:3] == ["#3", "PRUNED", "0.55"]
    assert rows["#4"][:4] == ["#4", "COMPLETE", "0.84", "0.82"] and "best" in rows["#4"][-1]


def test_not_champion_says_so() -> None:
    """A registered version that did not win says champion: no, with the reason."""
    body = plain(mail(report(became_champion=False, promotion_reason="not better than v2")))
    assert "Champion:          no" in body
    assert "Promotion:         not better than v2" in body


def test_html_alternative_carries_the_same_facts_escaped() -> None:
    """The HTML part holds the facts, with HTML special characters escaped."""
    msg = mail(report(model_name="cnn<script>", best_params={"layers": "<3>"}))
    page = html(msg)
    assert "9f1c2e3d4b5a69788796a5b4c3d2e1f0a9b8c7d6" in page
    assert "models:/eeg-motor-imagery/3" in page
    assert "cnn&lt;script&gt;" in page and "<script>" not in page
    assert "<td>&lt;3&gt;</td>" in page


def plot_part(msg: EmailMessage) -> EmailMessage:
    """The one image/png part of an email, wherever it sits."""
    [png] = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert isinstance(png, EmailMessage)
    return png


def test_plot_is_shown_inline_in_the_html_when_given() -> None:
    """plot_png is part of the HTML (multipart/related), shown where the page references
    its Content-ID, named metric-per-trial.png, bytes intact; the text part is unchanged."""
    parsed = reparsed(mail(report(), plot=FAKE_PNG))
    png = plot_part(parsed)
    assert png.get_filename() == "metric-per-trial.png"
    assert png.get_content_disposition() == "inline"
    assert png.get_content() == FAKE_PNG
    related = parsed.get_payload()[1]
    assert related.get_content_type() == "multipart/related"
    cid = png["Content-ID"].strip("<>")
    assert f'<img src="cid:{cid}"' in html(parsed)
    assert plain(parsed).startswith("Goal reached")


def test_no_plot_means_no_attachment() -> None:
    """Without plot_png the email is text and HTML only."""
    msg = mail(report(), plot=None)
    assert list(msg.iter_attachments()) == []
    assert msg.get_content_type() == "multipart/alternative"


def test_headers_name_the_chain_status_sender_and_recipients() -> None:
    """From, To and the X-Trainchain-* headers are set; Date is left to the mailer."""
    msg = render(
        not_reached(),
        sender="Trainchain <tc@example.org>",
        recipients=["a@example.org", "b@example.org"],
        plot_png=None,
    )
    assert msg["X-Trainchain-Chain"] == "eeg-motor-imagery-20250101T120000Z-1a2b3c"
    assert msg["X-Trainchain-Status"] == "goal_not_reached"
    assert msg["From"] == "Trainchain <tc@example.org>"
    assert msg["To"] == "a@example.org, b@example.org"
    assert msg["Date"] is None


def test_rendering_is_a_function_of_its_inputs() -> None:
    """The same report renders to the same bytes (no clock, no random ids)."""
    assert mail(report(), FAKE_PNG).as_bytes() == mail(report(), FAKE_PNG).as_bytes()


# --- the failure emails -----------------------------------------------------------------


def test_goal_not_reached_body_says_budget_best_trial_no_promotion_and_log_tail() -> None:
    """Budget ran out: best value and trial with params, nothing promoted, last log lines."""
    body = plain(mail(not_reached()))
    assert body.startswith(
        "The tuning budget ran out below the goal (val_accuracy >= 0.999) after 4 of 4 trials."
    )
    assert "Best val_accuracy reached: 0.84 by trial #4 (held-out test: 0.82)." in body
    assert "C = 3.5" in body
    assert "Nothing was promoted: the champion alias was not moved." in body
    assert "Last log lines:" in body
    assert body.index("trial 3 epoch 0:") < body.index("trial 3 epoch 14: val_accuracy=0.84")


def test_failed_body_gives_the_error_and_the_last_log_lines() -> None:
    """A failed chain's email gives the whole error, the last log lines and no promotion."""
    body = plain(mail(failed()))
    assert "TrainingError: trial 4 exited with status 137 (killed: out of memory)" in body
    assert "hint: lower batch_size" in body
    assert "Nothing was promoted" in body
    assert "  Killed" in body.split("Last log lines:")[1]
    assert "Killed" in html(mail(failed()))


def test_failure_with_a_registered_version_says_the_alias_did_not_move() -> None:
    """If a version was registered before the failure, the email says champion did not move."""
    body = plain(mail(failed(registry_version="5")))
    assert (
        "Nothing was promoted: version 5 was registered but the champion alias was not moved."
        in body
    )


def test_failure_with_no_completed_trial_says_there_is_no_best_value() -> None:
    """No completed trial: the email says so instead of inventing a best value."""
    body = plain(mail(failed(trials=(), best_trial=None, best_value=None, best_params={})))
    assert "No trial completed, so there is no best value." in body
    assert "(no trials ran)" in body


def test_the_log_tail_is_bounded() -> None:
    """Only the last lines of a huge log go into the email, with a note of what was left out."""
    huge = "\n".join(f"line {i}" for i in range(10_000))
    body = plain(mail(failed(log_tail=huge)))
    assert "line 9999" in body
    assert "line 9000" not in body
    assert "earlier lines left out" in body
    assert len(body) < 20_000


# --- secrets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://bob:hunter2@git.example.org/x.git", "https://bob:***@git.example.org/x.git"),
        (
            "postgresql+psycopg://ml:p%40ss@db:5432/mlflow",
            "postgresql+psycopg://ml:***@db:5432/mlflow",
        ),
        ("redis://:tok3n@cache:6379/0", "redis://:***@cache:6379/0"),
        (
            "clone failed: https://u:a/b:c@h/r (exit 128)",
            "clone failed: https://u:***@h/r (exit 128)",
        ),
        ("http://host:8080/path", "http://host:8080/path"),
        ("no url here: user:pw@host", "no url here: user:pw@host"),
    ],
)
def test_scrub_replaces_url_passwords(text: str, expected: str) -> None:
    """scheme://user:password@ loses its password; other text is left alone."""
    assert redact(text) == expected


def test_no_url_password_reaches_any_part_of_the_email() -> None:
    """Passwords in repository, tracking URI, error and log tail are scrubbed everywhere."""
    r = failed(
        repository="https://ci:repo-pw-1@git.example.org/lab/eeg.git",
        tracking_uri="postgresql://ml:db-pw-2@db/mlflow",
        error="PullError: git fetch https://ci:err-pw-3@git.example.org/lab/eeg.git failed",
        log_tail="connecting to postgresql://ml:log-pw-4@db/mlflow\nKilled",
        model_uri="s3://k:s3-pw-5@bucket/model",
    )
    raw = mail(r, FAKE_PNG).as_bytes()
    text = plain(mail(r)) + html(mail(r))
    for secret in ("repo-pw-1", "db-pw-2", "err-pw-3", "log-pw-4", "s3-pw-5"):
        assert secret.encode() not in raw
        assert secret not in text
    assert "postgresql://ml:***@db/mlflow" in text


def test_no_url_token_reaches_the_email() -> None:
    """A token as an https URL's user part or in a query string never reaches the email."""
    r = failed(
        repository="https://ghp_abc123@github.com/x/y.git",
        error="fetch https://git.example.org/x.git?access_token=glpat-err456 failed",
        log_tail="GET https://ci.example.org/job/x?token=trig789\nKilled",
    )
    raw = mail(r, FAKE_PNG).as_bytes()
    text = plain(mail(r)) + html(mail(r))
    for secret in ("ghp_abc123", "glpat-err456", "trig789"):
        assert secret.encode() not in raw
        assert secret not in text
    assert "https://***@github.com/x/y.git" in text


# --- the plot ---------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_MAGIC)
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.parametrize(
    "r",
    [
        report(),
        confirmed(),
        search_only(),
        not_reached(),
        report(goal_metric="val_loss", direction="minimize", threshold=0.3, best_value=0.2),
        failed(trials=(), best_trial=None, best_value=None),
        failed(
            trials=(TrialSummary(0, "FAIL", None, {}), TrialSummary(1, "FAIL", None, {})),
            best_trial=None,
            best_value=None,
        ),
        failed(trials=(TrialSummary(0, "PRUNED", 0.5, {}),), best_trial=None, best_value=None),
        report(
            trials=(TrialSummary(0, "COMPLETE", float("nan"), {}),),
            best_trial=None,
            best_value=None,
        ),
    ],
    ids=[
        "success",
        "confirmed",
        "search-only",
        "not-reached",
        "minimize",
        "no-trials",
        "only-failed",
        "only-pruned",
        "nan",
    ],
)
def test_metric_plot_is_a_png_for_every_shape_of_report(r: ChainReport) -> None:
    """Success, failure, minimise, and no completed trials at all: always a real PNG."""
    width, height = png_size(metric_plot(r))
    assert width >= 600 and height >= 300


def test_metric_plot_uses_no_pyplot_and_matplotlib_loads_lazily() -> None:
    """Importing notify/plots loads no matplotlib; plotting uses Agg and never pyplot."""
    code = (
        "import sys\n"
        "import trainchain.core.notify, trainchain.core.plots, trainchain.adapters.mailer\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at import time'\n"
        "from trainchain.core.report import ChainReport\n"
        "r = ChainReport('c', 'm', 'r', 'abc', 'val_accuracy', 0.8, 'maximize', 'failed', 3)\n"
        "png = trainchain.core.plots.metric_plot(r)\n"
        "assert png.startswith(b'\\x89PNG'), png[:8]\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "import matplotlib\n"
        "assert matplotlib.get_backend().lower() == 'agg', matplotlib.get_backend()\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_a_model_the_champion_already_is_says_so_in_subject_and_body() -> None:
    """Nothing changed since the champion: the email says which version already is it."""
    reason = "not registered: champion v3 already is this model (the same commit, data, ...)"
    r = report(registry_version=None, same_as="champion v3", promotion_reason=reason)
    msg = mail(r)
    assert msg["Subject"].endswith(
        "goal reached (val_accuracy 0.84 >= 0.8), champion v3 already is this model"
    )
    assert "Registry:   not registered: champion v3 already is this model" in plain(msg)
    assert reason in plain(msg) and "champion v3 already is this model" in html(msg)


def test_a_failure_before_tuning_says_so_and_shows_no_goal_or_trials() -> None:
    """A chain that failed at the pull, detection or its configuration: the error and its
    hint, no goal, trials, best value or log tail that never were."""
    r = failed(
        goal_metric="",
        threshold=0.0,
        max_trials=0,
        trials=(),
        best_trial=None,
        best_value=None,
        best_params={},
        log_tail="",
        error="cannot clone /srv/x: no such repository\n  hint: check the URL",
        before_tuning=True,
    )
    text = plain(mail(r))
    assert text.startswith("The chain stopped before tuning (the pull, detection or the")
    # the same empty report from a chain past its pull (a trial that gave up, a registry
    # error) does not claim that nothing was trained
    assert "stopped before tuning" not in plain(mail(r.with_(before_tuning=False)))
    assert "  hint: check the URL" in text
    for absent in ("Goal:", "Trials:", "no best value", "Last log lines", "Nothing was promoted"):
        assert absent not in text


def test_values_print_plainly_and_trials_count_from_one() -> None:
    """Hyperparameters print as written ('8-12' is 8-12), and trial numbers are 1-based
    everywhere (Optuna's trial 3 is #4, as on the console)."""
    r = report(best_params={"band": "8-12", "C": 3.5, "shrink": True})
    text, page = plain(mail(r)), html(mail(r))
    assert "band = 8-12" in text and "C = 3.5" in text and "shrink = True" in text
    assert "'8-12'" not in text and "&#x27;8-12&#x27;" not in page
    assert "<td>8-12</td>" in page
    rows = [line.split()[0] for line in text.splitlines() if line.startswith("  #")]
    assert rows == ["#1", "#2", "#3", "#4"]
    assert "#4" in [line.split()[0] for line in text.splitlines() if "<- best" in line]


def test_hyperparameters_the_best_trial_did_not_use_are_left_out() -> None:
    """`kernel` applies to svc only (`when:`): a best trial with classifier sgd is shown with
    the hyperparameters it used, in the text, the HTML and after a JSON round trip."""
    from trainchain.core.report import ChainReport

    r = report(
        best_params={"classifier": "sgd", "kernel": "rbf", "epochs": 12},
        unused_params=("kernel",),
    )
    for shown in (r, ChainReport.from_dict(json.loads(r.to_json()))):
        text, page = plain(mail(shown)), html(mail(shown))
        assert "classifier = sgd" in text and "epochs = 12" in text
        assert "kernel" not in text and "kernel" not in page
        assert shown.best_params["kernel"] == "rbf"  # kept for the registry


def test_the_goal_label_sits_clear_of_the_plotted_trials() -> None:
    """The goal's label is outside the plotting area (right of it), so no trial's line or
    marker can run through it; the trial axis counts from 1."""
    from trainchain.core.plots import metric_figure

    fig = metric_figure(confirmed())
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    main = fig.axes[0]
    every = [main, *main.child_axes]  # the goal's label is a tick of a right-hand axis
    texts = [t for ax in every for t in ax.get_yticklabels() if t.get_text().startswith("goal")]
    assert len(texts) == 1 and texts[0].get_text() == "goal >= 0.8"
    label, area = texts[0].get_window_extent(renderer), main.get_window_extent(renderer)
    assert label.x0 >= area.x1  # to the right of the plotting area, not over it
    low, high = main.get_xlim()
    shown = [t.get_text() for t in main.get_xticklabels() if low <= t.get_position()[0] <= high]
    assert shown == ["1", "2", "3", "4"]  # Optuna's trials 0 to 3
