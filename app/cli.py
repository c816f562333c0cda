"""`kb`: ingest, search, answer, manage keys and serve — over HTTP when a server runs, in-process otherwise."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from app.client import ClientError, KbClient, server_running
from app.settings import MAX_ADAPT_MINUTES, Settings
from retrieval.types import Principal, SearchMode

cli = typer.Typer(help="kb: grounded answers over your documents.", no_args_is_help=True, add_completion=False)
keys_cli = typer.Typer(help="Manage API keys.", no_args_is_help=True)
runs_cli = typer.Typer(help="Agent runs.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(runs_cli, name="runs")


def _groups(value: str | None) -> list[str] | None:
    return None if value is None else [g.strip() for g in value.split(",") if g.strip()]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _container(settings: Settings) -> Any:
    from app.container import Container

    container = Container(settings)
    container.warm_up()
    return container


@cli.command()
def serve(sample: Annotated[bool, typer.Option(help="Ingest the bundled sample corpus on start.")] = False) -> None:
    """Run the API (and, with the embedded index, the ingestion worker) in this process."""
    from app.server import serve as run

    run(Settings(), ingest_sample=sample)


@cli.command()
def ingest(
    directory: Path,
    source: Annotated[str, typer.Option("--source", help="Source name, e.g. handbook.")],
    acl: Annotated[str, typer.Option(help="Comma-separated groups that may read it.")] = "public",
    wait: Annotated[bool, typer.Option(help="Wait for the job and show progress.")] = False,
) -> None:
    """Register DIR as a source (or update it) and re-index it."""
    settings = Settings()
    if not directory.is_dir():
        _fail(f"{directory} is not a directory")
    path, groups = str(directory.resolve()), _groups(acl) or ["public"]
    if server_running(settings):
        try:
            client = KbClient(settings)
            try:
                client.call("POST", "/v1/sources", {"name": source, "path": path, "acl": groups})
            except ClientError as exc:
                if not str(exc).startswith("409"):
                    raise
                client.call("PATCH", f"/v1/sources/{source}", {"path": path, "acl": groups})
            done = _queued(client, settings, client.call("POST", f"/v1/sources/{source}/reindex"), wait)
            if done:
                _report(done)
        except ClientError as exc:
            _fail(str(exc))
        return
    from ingestion import catalog

    container = _container(settings)
    try:
        with container.sessions() as db:
            try:
                catalog.create_source(db, source, path, groups)
            except catalog.Conflict:
                catalog.update_source(db, source, path, groups)
            except catalog.CatalogError as exc:
                _fail(str(exc))
            job_id = catalog.open_job(db, source).id
        _report(_run_here(container, job_id, show=wait))
    finally:
        container.close()


def _queued(client: KbClient, settings: Settings, job: dict[str, Any], wait: bool) -> dict[str, Any] | None:
    """Say where a job was queued; with `wait`, follow it on the server to its end."""
    typer.echo(f"job {job['id']} queued on {settings.server_url}")
    return _follow(lambda: client.call("GET", f"/v1/jobs/{job['id']}")) if wait else None


def _run_here(container: Any, job_id: str, show: bool) -> dict[str, Any]:
    """Run a job in this process through the task code while following its progress; the job as it ended."""
    from ingestion import catalog

    runner = threading.Thread(target=container.run_inline, args=(job_id,), daemon=True)

    def fetch() -> dict[str, Any]:
        with container.sessions() as db:
            job = catalog.get_job(db, job_id)
            found = {**job.progress(), "failures": catalog.job_failures(db, job_id)}
        if not runner.is_alive() and found["status"] not in {"succeeded", "failed", "cancelled"}:
            # The task raised before it could record an end: say so instead of waiting forever.
            found = {**found, "status": "failed", "error": found["error"] or "the job stopped; see the log above"}
        return found

    runner.start()
    job = _follow(fetch, show=show)
    runner.join()
    return job


def _follow(fetch: Any, show: bool = True) -> dict[str, Any]:
    """Poll a job until it ends, drawing a progress bar on stderr."""
    while True:
        job: dict[str, Any] = fetch()
        if show and sys.stderr.isatty():
            width = 30
            if job["kind"] == "adapt":
                detail = job.get("detail") or {}
                fraction = float(detail.get("fraction") or 0.0)
                line = f"{fraction:.0%} {detail.get('stage', '')}, {job['status']}"
            else:
                total, done = job["docs_total"] or 0, job["docs_done"] + job["docs_failed"]
                fraction = done / total if total else 0.0
                line = f"{done}/{total} docs, {job['chunks_indexed']} chunks, {job['status']}"
            filled = int(width * fraction)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {line}   ")
            sys.stderr.flush()
        if job["status"] in {"succeeded", "failed", "cancelled"}:
            if show and sys.stderr.isatty():
                sys.stderr.write("\n")
            return job
        time.sleep(0.3)


def _report(job: dict[str, Any]) -> None:
    typer.echo(
        f"job {job['id']} {job['status']}: {job['docs_done']} indexed ({job['docs_skipped']} unchanged), "
        f"{job['docs_failed']} failed, {job['docs_deleted']} removed, {job['chunks_indexed']} chunks embedded"
    )
    for failure in job.get("failures", []):
        typer.echo(f"  failed: {failure['path']}: {failure['reason']}")
    if job["status"] == "failed":
        _fail(job.get("error") or "job failed")


def _report_adapt(job: dict[str, Any]) -> None:
    report = (job.get("detail") or {}).get("report")
    if job["status"] != "succeeded" or not report:
        _fail(job.get("error") or f"adaptation {job['status']}")
        return
    before, after = report["before"], report["after"]
    typer.echo(
        f"trained on {report['pairs']} mined pairs in {report['minutes']} min; held-back pairs ({report['holdout']}): "
        f"MRR {before['mrr']:.3f} now -> {after['mrr']:.3f} trained (chance {after['chance_mrr']:.3f})"
    )
    if report["replaced"]:
        typer.echo(f"the new reranker is in use: {report['model_path']}")
    else:
        typer.echo(f"kept the current ranking; the candidate stays at {report['candidate_path']}")


@cli.command()
def adapt(
    minutes: Annotated[
        float | None, typer.Option(help="Training time budget (default KB_ADAPT_BUDGET_SECONDS).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job and show progress.")] = True,
) -> None:
    """Train a reranker on pairs mined from your indexed documents; it is used only if it ranks better."""
    settings = Settings()
    if minutes is not None and not 0 < minutes <= MAX_ADAPT_MINUTES:
        _fail(f"--minutes must be more than 0 and at most {MAX_ADAPT_MINUTES:g}")
    if server_running(settings):
        try:
            client = KbClient(settings)
            done = _queued(client, settings, client.call("POST", "/v1/reranker/adapt", {"minutes": minutes}), wait)
            if done:
                _report_adapt(done)
        except ClientError as exc:
            _fail(str(exc))
        return
    from ingestion import catalog

    container = _container(settings)
    try:
        with container.sessions() as db:
            try:
                job_id = catalog.open_adapt(db, settings.adapt_budget(minutes)).id
            except catalog.CatalogError as exc:
                _fail(str(exc))
        _report_adapt(_run_here(container, job_id, show=wait))
    finally:
        container.close()


def _principal(groups: list[str] | None) -> Principal:
    return Principal(name="cli", groups=tuple(groups or ()), scopes=("read",))


@cli.command()
def search(
    query: str,
    groups: Annotated[str | None, typer.Option(help="Act as a principal in these groups.")] = None,
    mode: Annotated[SearchMode, typer.Option(help="bm25, dense or hybrid.")] = SearchMode.HYBRID,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=100)] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Search the index."""
    settings = Settings()
    if server_running(settings):
        try:
            body = KbClient(settings, _groups(groups)).call(
                "POST", "/v1/search", {"query": query, "top_k": top_k, "mode": mode.value}
            )
        except ClientError as exc:
            _fail(str(exc))
        hits = [{k: h[k] for k in ("doc_id", "path", "score", "text", "acl")} for h in body["hits"]]
    else:
        container = _container(settings)
        try:
            found = container.search.search(_principal(_groups(groups)), query, top_k, mode)
        finally:
            container.close()
        hits = [
            {
                "doc_id": h.chunk.doc_id,
                "path": h.chunk.path,
                "score": h.score,
                "text": h.chunk.text,
                "acl": list(h.chunk.acl),
            }
            for h in found
        ]
    if as_json:
        typer.echo(json.dumps({"hits": hits}, indent=2))
        return
    if not hits:
        typer.echo("no results you may read")
    for i, hit in enumerate(hits, 1):
        typer.echo(f"{i}. [{hit['score']:.3f}] {hit['doc_id']}\n   {hit['text'][:200].replace(chr(10), ' ')}")


@cli.command()
def answer(
    question: str,
    groups: Annotated[str | None, typer.Option(help="Act as a principal in these groups.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Answer a question with citations (extractive until an LLM is configured)."""
    settings = Settings()
    if server_running(settings):
        try:
            body = KbClient(settings, _groups(groups)).call("POST", "/v1/answer", {"question": question})
        except ClientError as exc:
            _fail(str(exc))
        text, cites = body["answer"], body["citations"]
    else:
        container = _container(settings)
        try:
            result = container.answers.answer(_principal(_groups(groups)), question)
        finally:
            container.close()
        text = result.text
        cites = [{"doc_id": c.doc_id, "path": c.path, "text": c.text} for c in result.citations]
    citations = [{"doc_id": c["doc_id"], "path": c["path"], "text": c["text"]} for c in cites]
    if as_json:
        typer.echo(json.dumps({"answer": text, "citations": citations}, indent=2))
        return
    typer.echo(text)
    for i, c in enumerate(citations, 1):
        typer.echo(f"  [{i}] {c['doc_id']} ({c['path']})")


@keys_cli.command("create")
def keys_create(
    name: str,
    groups: Annotated[str, typer.Option(help="Comma-separated groups the key may read.")] = "",
    admin: Annotated[bool, typer.Option(help="Grant the admin scope (every scope).")] = False,
    scopes: Annotated[
        str, typer.Option(help="Comma-separated extra scopes, e.g. notes,approve,webhook (read is always granted).")
    ] = "",
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    from app.auth import create_key
    from app.db import init_db
    from ingestion.catalog import CatalogError

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    sessions = init_db(settings.sql_url)
    try:
        with sessions() as db:
            new = create_key(db, name, _groups(groups) or [], admin=admin, scopes=_groups(scopes) or [])
    except CatalogError as exc:
        _fail(str(exc))
    typer.echo(json.dumps({"id": new.id, "name": new.name, "key": new.key, "groups": new.groups, "scopes": new.scopes}))


@runs_cli.command("replay")
def runs_replay(run_id: str, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Plan a run's steps again in dry-run and print each step whose plan differs from the stored one."""
    settings = Settings()
    if server_running(settings):
        try:
            body = KbClient(settings).call("GET", f"/v1/runs/{run_id}/replay")
        except ClientError as exc:
            _fail(str(exc))
        diffs = body["differences"]
    else:
        from dataclasses import asdict

        from agents.errors import RunNotFound

        container = _container(settings)
        try:
            diffs = [asdict(d) for d in container.runner.replay(run_id)]
        except RunNotFound as exc:
            _fail(str(exc))
        finally:
            container.close()
    if as_json:
        typer.echo(json.dumps({"run_id": run_id, "same": not diffs, "differences": diffs}, indent=2))
        return
    if not diffs:
        typer.echo(f"run {run_id}: every step plans as it did")
    for d in diffs:
        typer.echo(f"step {d['position']} ({d['tool']}) plans differently:")
        typer.echo(f"  then: {json.dumps(d['stored'], sort_keys=True)}")
        typer.echo(f"  now:  {json.dumps(d['current'], sort_keys=True)}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
