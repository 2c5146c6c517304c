"""``scaler dashboard``: browse a run's study in optuna-dashboard (the optional extra ``dashboard``)."""

from __future__ import annotations

import socket

import click

from scaler.cli.main import main
from scaler.errors import UserError

EXTRA_HINT = "pip install 'lps-scaler[dashboard]'"


@main.command("dashboard")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 opens it to other machines (the dashboard has no login).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Port to listen on.")
def dashboard_cmd(run_dir: str, host: str, port: int) -> None:
    """Browse a run's study in optuna-dashboard, until Ctrl-C.

    Shows every trial with its latency_ms and miou, whether it is within the latency budget
    (constraints), the Pareto front, and the attached plots and model cards. Works on the run's
    journal or on its database (the search's --storage), also while the search runs.

    \b
    Needs the optional extra:
      pip install 'lps-scaler[dashboard]'
    """

    from scaler.search.artifacts import artifact_store
    from scaler.search.store import open_run

    try:
        import optuna_dashboard
    except ImportError:
        raise UserError(f"scaler dashboard needs the package optuna-dashboard: {EXTRA_HINT}") from None
    store = open_run(run_dir)
    try:
        _check_address(host, port)
        url = f"http://{host}:{port}/dashboard/studies/{store.study_id}"
        click.echo(f"optuna-dashboard for {run_dir} (study {store.study_name!r}) at {url}; Ctrl-C stops it", err=True)
        optuna_dashboard.run_server(store.storage, host=host, port=port, artifact_store=artifact_store(run_dir))
    except OSError as e:
        raise UserError(
            f"cannot serve the dashboard on {host}:{port} ({e.strerror or e}); choose another --port or --host"
        ) from None


def _check_address(host: str, port: int) -> None:
    """Bind and release the address first, so a port in use is one error line, not after the server's banner.

    Raises:
        OSError: The address cannot be bound (in use, or an unknown host).
    """
    # As the server will bind it (bottle's WSGIRefServer: IPv6 for a host with a colon, address reuse on).
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
