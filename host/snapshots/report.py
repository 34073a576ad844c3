"""Human views of a quiesced snapshot's record: the timeline, the writers, the artifacts.

Used by ``snapshot create --quiesce``, ``snapshot show`` and the demo. The agent reports how
long each writer's prepare, lock and release took, not when; the timeline places them the way
the agent runs them (prepares at once, locks in order from the first lock, releases in reverse
order from the thaw), so those rows are marked ``~``. Host events are measured.
"""

from __future__ import annotations

from typing import Any

from common.tables import table


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _event_ms(host: dict[str, Any], event: str) -> float | None:
    for e in host.get("events") or []:
        if e.get("event") == event:
            return _num(e.get("t_ms"))
    return None


def timeline(record: dict[str, Any]) -> list[str]:
    """Lines ``t (ms)  event`` from a snapshot record (``report`` with ``agent`` and ``host``)."""
    report = record.get("report") or {}
    agent, host = report.get("agent") or {}, report.get("host") or {}
    base = _event_ms(host, "freeze_sent")
    rows: list[tuple[float, str, str]] = []

    def at(event: str, text: str) -> None:
        t = _event_ms(host, event)
        if t is not None:
            rows.append((t - (base or 0.0), " ", text))

    at("ping", f"ping {host.get('endpoint', '')}")
    at("freeze_sent", "freeze sent")
    writers = [w for w in agent.get("writers") or [] if isinstance(w, dict)]
    if base is not None and writers:
        for w in writers:
            if "prepare_ms" in w:
                rows.append(
                    (
                        _num(w["prepare_ms"]),
                        "~",
                        f"{w['name']}: prepared ({_num(w['prepare_ms']):.1f} ms)",
                    )
                )
        t = _num((agent.get("timings") or {}).get("prepare_ms"))
        for w in writers:
            if "freeze_ms" in w:
                t += _num(w["freeze_ms"])
                rows.append((t, "~", f"{w['name']}: locked ({_num(w['freeze_ms']):.1f} ms)"))
    at("frozen", "all writers hold: freeze reply")
    at("quiesce_failed", "quiesce FAILED")
    at("abort_sent", "abort (freezeFail) sent")
    sw = host.get("switch") or {}
    extra = f", client I/O paused {sw['paused_ms']:.1f} ms" if "paused_ms" in sw else ""
    at("switch_start", "snapshot switch: flush + new delta")
    at(
        "switch_end",
        f"snapshot switched ({_num((host.get('split') or {}).get('switch_ms')):.1f} ms{extra})",
    )
    thaw = _event_ms(host, "thaw_sent")
    at("thaw_sent", "thaw sent")
    if thaw is not None and host.get("confirmed"):
        t = thaw - (base or 0.0)
        for w in reversed(writers):
            if "thaw_ms" in w:
                t += _num(w["thaw_ms"])
                rows.append((t, "~", f"{w['name']}: released ({_num(w['thaw_ms']):.1f} ms)"))
    at("thawed", "thaw reply: " + ("confirmed" if host.get("confirmed") else "NOT confirmed"))
    rows.sort(key=lambda r: r[0])
    return [f"{mark}{t:9.1f}  {text}" for t, mark, text in rows]


def summary(record: dict[str, Any]) -> list[str]:
    """The held window and its split, the consistency, the warnings."""
    host = (record.get("report") or {}).get("host") or {}
    split = host.get("split") or {}
    lines = [
        f"consistency: {record.get('consistency')}"
        + ("" if host.get("confirmed") else "  (the quiesce was NOT confirmed)")
    ]
    if host.get("window_ms") is not None:
        parts = ", ".join(f"{k[:-3]} {_num(v):.1f}" for k, v in split.items() if v is not None)
        lines.append(
            f"held window (freeze sent -> thaw reply): {_num(host['window_ms']):.1f} ms"
            f"  [{parts} ms]"
        )
    if host.get("agent_held_ms") is not None:
        lines.append(
            f"locked (first lock -> filesystems thawed, agent clock): "
            f"{_num(host['agent_held_ms']):.1f} ms"
        )
    if host.get("fallback"):
        lines.append(f"fallback: {host['fallback']}")
    return lines


def writers_table(record: dict[str, Any]) -> list[str]:
    agent = (record.get("report") or {}).get("agent") or {}
    writers = [w for w in agent.get("writers") or [] if isinstance(w, dict)]
    if not writers:
        return ["(no writer report)"]

    def ms(w: dict[str, Any], key: str) -> str:
        return f"{_num(w[key]):.1f}" if key in w else "-"

    head = ("writer", "state", "prepare", "lock", "release", "error")
    rows = [
        (
            w.get("name"),
            w.get("state"),
            ms(w, "prepare_ms"),
            ms(w, "freeze_ms"),
            ms(w, "thaw_ms"),
            w.get("error") or "",
        )
        for w in writers
    ]
    return table(head, rows)


def artifacts_lines(record: dict[str, Any]) -> list[str]:
    lines = []
    for writer, arts in sorted((record.get("artifacts") or {}).items()):
        if not isinstance(arts, dict):
            continue
        if "backup_label" in arts:
            lines.append(
                f"{writer}: backup {arts.get('start_lsn')} .. {arts.get('stop_lsn')} "
                f"(WAL {arts.get('wal_file_start')} .. {arts.get('wal_file_stop')}), "
                "backup_label recorded"
                + (", tablespace_map recorded" if arts.get("tablespace_map") else "")
            )
        elif "binlog_file" in arts or "gtid" in arts:
            lines.append(
                f"{writer}: {arts.get('lock')} lock; binlog {arts.get('binlog_file')}:"
                f"{arts.get('binlog_position')} GTID {arts.get('gtid') or '-'}"
            )
        else:
            lines.append(f"{writer}: {', '.join(sorted(arts))}")
    return lines


def full(record: dict[str, Any]) -> list[str]:
    out = [
        f"snapshot {record.get('name')!r}  created {record.get('created', '')}  "
        f"layer {record.get('layer', '')}"
    ]
    if record.get("description"):
        out.append(f"description: {record['description']}")
    out += summary(record)
    if (record.get("report") or {}).get("agent"):
        out += ["", "writers (ms):", *("  " + line for line in writers_table(record))]
        out += ["", "timeline (ms after the freeze was sent; ~ = placed from durations):"]
        out += ["  " + line for line in timeline(record)]
    arts = artifacts_lines(record)
    if arts:
        out += ["", "artifacts:", *("  " + line for line in arts)]
    warnings = ((record.get("report") or {}).get("host") or {}).get("warnings") or []
    if warnings:
        out += ["", *(f"WARNING: {w}" for w in warnings)]
    return out
