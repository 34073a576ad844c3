"""Human views of a quiesced snapshot's record: the timeline, the writers, the artifacts.

Used by ``snapshot create --quiesce``, ``snapshot show`` and the demo. The agent reports when
each writer's steps started and how long they took, on its own clock; the timeline places
those rows (marked ``~``) on the host's by assuming the freeze request and its reply took
equally long. Host events are measured. Records from agents that report durations only are
placed the way the agent runs them (prepares at once, locks in order from the first lock,
releases in reverse from the thaw).
"""

from __future__ import annotations

from typing import Any

from common.tables import table

STEPS = ("prepare", "freeze", "thaw", "finish", "abort", "emergency")
SHOWN = {"freeze": "lock", "thaw": "release", "emergency": "release by the ceiling"}


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _event_ms(host: dict[str, Any], event: str) -> float | None:
    for e in host.get("events") or []:
        if e.get("event") == event:
            return _num(e.get("t_ms"))
    return None


Row = tuple[float, str, str]


def _agent_rows(agent: dict[str, Any], writers: list[dict[str, Any]], skew: float) -> list[Row]:
    """Each step's end, the first lock, the last release and the thaw's arrival, from the
    agent's own clock (ms after the freeze arrived), shifted by ``skew``."""
    rows: list[Row] = []
    for w in writers:
        for step in STEPS:
            at = (w.get("at_ms") or {}).get(step)
            if at is not None and f"{step}_ms" in w:
                took = _num(w[f"{step}_ms"])
                text = f"{w['name']}: {SHOWN.get(step, step)} done ({took:.1f} ms)"
                rows.append((skew + _num(at) + took, "~", text))
    t = agent.get("timings") or {}
    if t.get("prepare_ms") is not None:
        first = skew + _num(t["prepare_ms"])
        rows.append((first, "~", "first lock: clients may wait from here"))
        if t.get("blocked_ms") is not None:
            blocked = _num(t["blocked_ms"])
            text = f"last lock released: clients run again (blocked {blocked:.1f} ms)"
            rows.append((first + blocked, "~", text))
    if t.get("thaw_at_ms") is not None:
        rows.append((skew + _num(t["thaw_at_ms"]), "~", "thaw arrived at the agent"))
    return rows


def _placed_rows(
    agent: dict[str, Any], writers: list[dict[str, Any]], thaw: float | None
) -> list[Row]:
    """An older agent's report, durations only: placed the way the agent runs its steps."""
    rows: list[Row] = []
    for w in writers:
        if "prepare_ms" in w:
            ms = _num(w["prepare_ms"])
            rows.append((ms, "~", f"{w['name']}: prepared ({ms:.1f} ms)"))
    t = _num((agent.get("timings") or {}).get("prepare_ms"))
    for w in writers:
        if "freeze_ms" in w:
            t += _num(w["freeze_ms"])
            rows.append((t, "~", f"{w['name']}: locked ({_num(w['freeze_ms']):.1f} ms)"))
    if thaw is not None:
        for w in reversed(writers):
            if "thaw_ms" in w:
                thaw += _num(w["thaw_ms"])
                rows.append((thaw, "~", f"{w['name']}: released ({_num(w['thaw_ms']):.1f} ms)"))
    return rows


def _skew(agent: dict[str, Any], host: dict[str, Any], base: float) -> float:
    """The freeze request's one-way time: half of (reply received - agent's time to hold)."""
    t = agent.get("timings") or {}
    frozen = _event_ms(host, "frozen")
    if frozen is None or t.get("prepare_ms") is None or t.get("freeze_ms") is None:
        return 0.0
    return max(0.0, (frozen - base - _num(t["prepare_ms"]) - _num(t["freeze_ms"])) / 2)


def timeline(record: dict[str, Any]) -> list[str]:
    """Lines ``t (ms)  event`` from a snapshot record (``report`` with ``agent`` and ``host``)."""
    report = record.get("report") or {}
    agent, host = report.get("agent") or {}, report.get("host") or {}
    base = _event_ms(host, "freeze_sent")
    rows: list[Row] = []

    def at(event: str, text: str) -> None:
        t = _event_ms(host, event)
        if t is not None:
            rows.append((t - (base or 0.0), " ", text))

    at("ping", f"ping {host.get('endpoint', '')}")
    at("freeze_sent", "freeze sent")
    writers = [w for w in agent.get("writers") or [] if isinstance(w, dict)]
    thaw = _event_ms(host, "thaw_sent")
    if base is not None and writers:
        if any("at_ms" in w for w in writers):
            rows += _agent_rows(agent, writers, _skew(agent, host, base))
        else:
            placed_from = thaw - base if thaw is not None and host.get("confirmed") else None
            rows += _placed_rows(agent, writers, placed_from)
    at("frozen", "all writers hold: freeze reply")
    at("quiesce_failed", "quiesce FAILED")
    at("abort_sent", "abort (freezeFail) sent")
    sw = host.get("switch") or {}
    extra = f", client I/O paused {sw['paused_ms']:.1f} ms" if "paused_ms" in sw else ""
    if extra and isinstance(sw.get("disks"), dict):  # a VM: one pause over all its disks
        extra += f" on all {len(sw['disks'])} disks"
    at("switch_start", "snapshot switch: flush + new delta")
    at(
        "switch_end",
        f"snapshot switched ({_num((host.get('split') or {}).get('switch_ms')):.1f} ms"
        f"{extra}): the cut is recorded",
    )
    gap = host.get("cut_to_thaw_ms")
    at(
        "thaw_sent",
        "thaw sent" + (f" ({_num(gap):.1f} ms after the cut)" if gap is not None else ""),
    )
    at("thawed", "thaw reply: " + ("confirmed" if host.get("confirmed") else "NOT confirmed"))
    rows.sort(key=lambda r: r[0])
    return [f"{mark}{t:9.1f}  {text}" for t, mark, text in rows]


def blocked_line(record: dict[str, Any]) -> str | None:
    """How long clients were blocked, and who took how much of it."""
    report = record.get("report") or {}
    agent, host = report.get("agent") or {}, report.get("host") or {}
    blocked = (agent.get("timings") or {}).get("blocked_ms", host.get("agent_blocked_ms"))
    if blocked is None:
        return None
    shares = [
        (str(w.get("name")), _num(w["blocked_share_ms"]))
        for w in agent.get("writers") or []
        if isinstance(w, dict) and w.get("blocked_share_ms") is not None
    ]
    parts = [f"{name} {ms:.1f}" for name, ms in shares if ms >= 0.05]
    if shares:
        rest = max(0.0, _num(blocked) - sum(ms for _, ms in shares))
        parts.append(f"host: switch and round trips {rest:.1f}")
    return (
        f"clients blocked (first lock -> last lock released, agent clock): {_num(blocked):.1f} ms"
        + (f"  [{', '.join(parts)} ms]" if parts else "")
    )


def summary(record: dict[str, Any]) -> list[str]:
    """How long clients were blocked, the held window and its split, the consistency."""
    host = (record.get("report") or {}).get("host") or {}
    split = host.get("split") or {}
    lines = [
        f"consistency: {record.get('consistency')}"
        + ("" if host.get("confirmed") else "  (the quiesce was NOT confirmed)")
    ]
    blocked = blocked_line(record)
    if blocked:
        lines.append(blocked)
    if host.get("window_ms") is not None:
        parts = ", ".join(f"{k[:-3]} {_num(v):.1f}" for k, v in split.items() if v is not None)
        lines.append(
            f"held window (freeze sent -> thaw reply): {_num(host['window_ms']):.1f} ms"
            f"  [{parts} ms]"
        )
    if host.get("agent_held_ms") is not None:
        lines.append(
            f"filesystems frozen (first lock -> filesystems thawed, agent clock): "
            f"{_num(host['agent_held_ms']):.1f} ms"
        )
    if ((record.get("report") or {}).get("agent") or {}).get("released_late"):
        lines.append("late release: the thaw came in time, the ceiling finished its release")
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

    head = ("writer", "state", "prepare", "lock", "release", "finish", "blocked share", "error")
    rows = [
        (
            w.get("name"),
            w.get("state"),
            ms(w, "prepare_ms"),
            ms(w, "freeze_ms"),
            ms(w, "thaw_ms"),
            ms(w, "finish_ms"),
            ms(w, "blocked_share_ms"),
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


def _where(record: dict[str, Any]) -> str:
    """Where the snapshot lives: a disk's layer, or a VM's layer of each disk."""
    layers = record.get("layers")
    if isinstance(layers, dict):
        return "layers " + ", ".join(f"{disk} {layer}" for disk, layer in layers.items())
    return f"layer {record.get('layer', '')}"


def full(record: dict[str, Any]) -> list[str]:
    out = [
        f"snapshot {record.get('name')!r}  created {record.get('created', '')}  {_where(record)}"
    ]
    if record.get("description"):
        out.append(f"description: {record['description']}")
    out += summary(record)
    if (record.get("report") or {}).get("agent"):
        out += ["", "writers (ms):", *("  " + line for line in writers_table(record))]
        out += ["", "timeline (ms after the freeze was sent; ~ = from the agent's report):"]
        out += ["  " + line for line in timeline(record)]
    arts = artifacts_lines(record)
    if arts:
        out += ["", "artifacts:", *("  " + line for line in arts)]
    warnings = ((record.get("report") or {}).get("host") or {}).get("warnings") or []
    if warnings:
        out += ["", *(f"WARNING: {w}" for w in warnings)]
    return out
