"""`Operations`: the asyncio shell behind the API's commands: operator overrides (persisted
and propagated) and drains (one `hactl.api.drain.Drain` core per server, stepped here).

It does exactly what a shell does (STYLE §8.4): feed the drain cores (connection counts read
through the `Director` port, timers from the `Clock`), carry out their effects through the
port, persist every change to the state file, and hand each change to `publish` (the peer
propagation hook, bytes of `overrides.encode_message`).

Lifecycle: construct, `resume()` once the daemon runs (restarts drains that were running
when the daemon stopped, with their original deadline), `aclose()` at shutdown (stops the
drain tasks; their overrides stay in the file, so the next start resumes them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from hactl.api.director import Director, UnknownServer
from hactl.api.drain import (
    ConnCounts,
    Drain,
    DrainEvent,
    DrainFinished,
    DrainOptions,
    DrainOutcome,
    DrainProgress,
    ExpireTemplates,
    Quiesce,
    RemoveServer,
)
from hactl.api.model import Override, OverrideKind, RealServerStatus, RsKey, format_rs, format_vs
from hactl.api.overrides import (
    DrainRecord,
    OverrideEntry,
    OverrideStore,
    decode_message,
    encode_message,
    save_state,
)
from hactl.clock import Clock
from hactl.ipvs.model import ServiceKey

__all__ = ["Operations"]

log = structlog.get_logger("hactl.api")

DrainUpdate = DrainProgress | DrainFinished


@dataclass(slots=True)
class _Running:
    drain: Drain
    task: asyncio.Task[None] | None = None
    reported: bool = False  # DrainFinished went to the watchers
    removed: bool = False  # the RemoveServer effect was carried out
    # None tells a watcher the daemon is stopping (its stream ends without an outcome).
    watchers: list[asyncio.Queue[DrainUpdate | None]] = field(default_factory=list)


class Operations:
    def __init__(
        self,
        director: Director,
        store: OverrideStore,
        *,
        clock: Clock,
        wall: Callable[[], float],
        state_path: Path | None,
        publish: Callable[[bytes], None] | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        self.director = director
        self.store = store
        self._clock = clock
        self._wall = wall
        self._state_path = state_path
        self._publish = publish
        self._poll_interval = poll_interval
        self._drains: dict[tuple[ServiceKey, RsKey], _Running] = {}

    # ---- lookups -------------------------------------------------------------------------

    def real_server(self, vs: ServiceKey, rs: RsKey) -> RealServerStatus:
        """The server's status. Raises UnknownServer."""
        for server in self.director.virtual_servers():
            if server.key == vs:
                found = server.real_server(rs)
                if found is None:
                    raise UnknownServer(f"no real server {format_rs(rs)} in {format_vs(vs)}")
                return found
        raise UnknownServer(f"no virtual server {format_vs(vs)}")

    def drain_state(self, vs: ServiceKey, rs: RsKey) -> DrainUpdate | None:
        """The last drain of a server: its progress while running, else how it finished."""
        running = self._drains.get((vs, rs))
        if running is None:
            return None
        return running.drain.finished or running.drain.progress(now=self._clock.now())

    # ---- overrides -----------------------------------------------------------------------

    async def set_override(self, vs: ServiceKey, rs: RsKey, override: Override | None) -> None:
        """enable (None) / disable / weight. Cancels a running drain of that server first.

        Raises UnknownServer, except for `enable` of an orphaned override (its server left
        the configuration): that clears it, so operators can tidy up dormant overrides.
        """
        try:
            self.real_server(vs, rs)
        except UnknownServer:
            if override is not None or self.store.get(vs, rs) is None:
                raise
            entry = self.store.set(vs, rs, None, now=self._wall())
            self._persist()
            self._propagate([entry])
            log.info("api.override_set", vs=format_vs(vs), rs=format_rs(rs), override=None,
                     orphaned=True)
            return
        running = self._drains.get((vs, rs))
        if running is not None and running.drain.finished is None:
            running.drain.cancel(now=self._clock.now())
            await self._carry_out(running, running.drain.pop_events())
        await self._apply(vs, rs, override, drain=None)

    async def _apply(
        self, vs: ServiceKey, rs: RsKey, override: Override | None, *, drain: DrainRecord | None
    ) -> None:
        entry = self.store.set(vs, rs, override, now=self._wall(), drain=drain)
        self._persist()
        await self.director.set_override(vs, rs, override)
        self._propagate([entry])
        log.info(
            "api.override_set", vs=format_vs(vs), rs=format_rs(rs),
            override=None if override is None else override.kind.value,
            weight=None if override is None else override.weight,
        )

    async def receive_peer_message(self, data: bytes) -> list[OverrideEntry]:
        """Merge a peer director's overrides and apply the ones that changed here.

        Drains are not re-run on the peer: it mirrors the override (quiesced, then disabled
        when the origin's drain ends), which is what keeps a failover from undoing a drain.
        Raises StateFileError for a malformed message (nothing is applied).
        """
        origin, entries = decode_message(data)
        changed = self.store.merge(entries)
        if changed:
            self._persist()
        for entry in changed:
            try:
                await self.director.set_override(entry.vs, entry.rs, entry.override)
            except UnknownServer:
                # Dormant here (the peer runs a different config); kept for when it appears.
                log.info("api.override_dormant", vs=format_vs(entry.vs), rs=format_rs(entry.rs))
        log.info("api.peer_overrides", origin=origin, received=len(entries), changed=len(changed))
        return changed

    def full_message(self) -> bytes:
        """Every entry, for a peer that was (re)discovered."""
        return encode_message(self.store.origin, self.store.entries())

    # ---- drains --------------------------------------------------------------------------

    async def drain(self, vs: ServiceKey, rs: RsKey, options: DrainOptions) -> DrainUpdate:
        """Start draining (idempotent: an ongoing or completed drain is returned unchanged).
        Raises UnknownServer."""
        self.real_server(vs, rs)
        running = self._drains.get((vs, rs))
        if running is not None and self._still_applies(running):
            return running.drain.finished or running.drain.progress(now=self._clock.now())
        entry = self.store.get(vs, rs)
        if entry is not None and entry.override is not None \
                and entry.override.kind is OverrideKind.DISABLE:
            # Already out of IPVS: quiescing would put it back (at weight 0). Nothing to do.
            return DrainFinished(vs=vs, rs=rs, outcome=DrainOutcome.DRAINED, counts=None,
                                 elapsed=0.0, removed=True)
        record = DrainRecord(
            timeout=options.timeout, expire_templates=options.expire_templates,
            remove=options.remove, started_at=self._wall(),
        )
        return await self._start(vs, rs, options, record, elapsed=0.0)

    def _still_applies(self, running: _Running) -> bool:
        finished = running.drain.finished
        if finished is None:
            return True
        if finished.outcome is DrainOutcome.CANCELLED:
            return False
        entry = self.store.get(running.drain.vs, running.drain.rs)
        # Drained and not touched since (still quiesced or removed): a second drain is a no-op.
        return entry is not None and entry.drain is not None and entry.override is not None \
            and entry.override.kind in (OverrideKind.DRAIN, OverrideKind.DISABLE)

    async def _start(
        self, vs: ServiceKey, rs: RsKey, options: DrainOptions, record: DrainRecord,
        *, elapsed: float,
    ) -> DrainUpdate:
        drain = Drain(vs, rs, options, now=self._clock.now(), elapsed=elapsed)
        running = _Running(drain)
        self._drains[(vs, rs)] = running
        log.info("api.drain_started", vs=format_vs(vs), rs=format_rs(rs), timeout=options.timeout,
                 expire_templates=options.expire_templates, remove=options.remove)
        # Quiesce and template expiry happen before answering, so the caller sees weight 0
        # at once and the first reading already counts without the expired templates.
        first = drain.pop_events()
        await self._apply(vs, rs, Override(kind=OverrideKind.DRAIN), drain=record)
        try:
            await self._carry_out(running, [e for e in first if not isinstance(e, Quiesce)])
            server = self.real_server(vs, rs)
            now = self._clock.now()
            drain.record_connections(
                ConnCounts(server.activeconns, server.inactconns, server.persistconns), now=now
            )
            # The first progress; with no connections, the whole end (removal included)
            # happens before answering, so the caller sees the end state.
            await self._carry_out(running, drain.pop_events())
        except Exception as exc:
            return self._fail(running, exc)
        if drain.finished is not None:
            return drain.finished
        running.task = asyncio.create_task(self._run(running), name=f"drain {format_rs(rs)}")
        return drain.progress(now=now)

    async def cancel_drain(self, vs: ServiceKey, rs: RsKey) -> DrainFinished:
        """Stop a running drain; the server stays quiesced. Raises UnknownServer when there
        is no running drain of that server."""
        running = self._drains.get((vs, rs))
        if running is None or running.drain.finished is not None:
            raise UnknownServer(f"no drain of {format_rs(rs)} in {format_vs(vs)} is running")
        running.drain.cancel(now=self._clock.now())
        await self._carry_out(running, running.drain.pop_events())
        finished = running.drain.finished
        assert finished is not None  # cancel() always finishes
        return finished

    async def watch(self, vs: ServiceKey, rs: RsKey) -> AsyncIterator[DrainUpdate]:
        """The drain's current progress, then every change, ending with DrainFinished."""
        running = self._drains.get((vs, rs))
        if running is None:
            return
        if running.drain.finished is not None:
            yield running.drain.finished
            return
        queue: asyncio.Queue[DrainUpdate | None] = asyncio.Queue()
        running.watchers.append(queue)
        try:
            yield running.drain.progress(now=self._clock.now())
            while True:
                update = await queue.get()
                if update is None:
                    return
                yield update
                if isinstance(update, DrainFinished):
                    return
        finally:
            running.watchers.remove(queue)

    async def resume(self) -> None:
        """Restart the drains the state file shows running (after a daemon restart)."""
        now = self._wall()
        for entry in self.store.entries():
            record = entry.drain
            if (
                record is None or record.outcome is not None or entry.override is None
                or entry.override.kind is not OverrideKind.DRAIN
            ):
                continue
            options = DrainOptions(
                timeout=record.timeout, expire_templates=record.expire_templates,
                remove=record.remove, poll_interval=self._poll_interval,
            )
            try:
                self.real_server(entry.vs, entry.rs)
            except UnknownServer:
                continue
            await self._start(entry.vs, entry.rs, options, record,
                              elapsed=max(0.0, now - record.started_at))

    async def aclose(self) -> None:
        """Stop the drain tasks and end every progress stream. Overrides stay as they are
        (in the file too), so the next start resumes the drains."""
        tasks = [r.task for r in self._drains.values() if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for running in self._drains.values():
            for queue in running.watchers:
                queue.put_nowait(None)

    # ---- the drain loop ------------------------------------------------------------------

    async def _run(self, running: _Running) -> None:
        try:
            await self._step_until_finished(running)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(running, exc)

    def _fail(self, running: _Running, exc: Exception) -> DrainFinished:
        """The port failed (a reload raced us, or a bug in the daemon) while carrying out a
        drain: end it (cancelled, unless the core had already decided), report the truth
        about the removal, and tell the watchers. The server stays as the last successful
        effect left it (quiesced)."""
        drain = running.drain
        log.error("api.drain_failed", vs=format_vs(drain.vs), rs=format_rs(drain.rs),
                  error=repr(exc))
        if drain.finished is None:
            drain.cancel(now=self._clock.now())
        drain.pop_events()  # effects are moot now; only the outcome is reported
        final = drain.finished
        assert final is not None  # finished above if it was not already
        if final.removed and not running.removed:
            final = replace(final, removed=False)  # the removal is what failed
        self.store.update_drain(drain.vs, drain.rs, final.outcome)
        try:
            self._persist()
        except OSError as error:
            log.error("api.state_write_failed", error=str(error))
        if not running.reported:
            running.reported = True
            for queue in running.watchers:
                queue.put_nowait(final)
        return final

    async def _step_until_finished(self, running: _Running) -> None:
        drain = running.drain
        while drain.finished is None:
            deadline = drain.next_deadline()
            assert deadline is not None  # a running drain always has its next poll
            await self._clock.sleep_until(deadline)
            if drain.finished is not None:  # cancelled while sleeping
                break
            now = self._clock.now()
            if drain.poll_due(now=now):
                try:
                    server = self.real_server(drain.vs, drain.rs)
                except UnknownServer:
                    # A reload removed the server: nothing left to drain.
                    drain.cancel(now=now)
                else:
                    drain.record_connections(
                        ConnCounts(server.activeconns, server.inactconns, server.persistconns),
                        now=now,
                    )
            drain.handle_timer(now=now)
            await self._carry_out(running, drain.pop_events())

    async def _carry_out(self, running: _Running, events: list[DrainEvent]) -> None:
        vs, rs = running.drain.vs, running.drain.rs
        for event in events:
            if isinstance(event, Quiesce):
                await self.director.set_override(vs, rs, Override(kind=OverrideKind.DRAIN))
            elif isinstance(event, ExpireTemplates):
                expired = await self.director.expire_templates(vs, rs)
                log.info("api.templates_expired", vs=format_vs(vs), rs=format_rs(rs), count=expired)
            elif isinstance(event, RemoveServer):
                entry = self.store.get(vs, rs)
                await self._apply(
                    vs, rs, Override(kind=OverrideKind.DISABLE, reason="drained"),
                    drain=None if entry is None else entry.drain,
                )
                running.removed = True
            else:
                if isinstance(event, DrainFinished):
                    self.store.update_drain(vs, rs, event.outcome)
                    self._persist()
                    entry = self.store.get(vs, rs)
                    if entry is not None:
                        self._propagate([entry])
                    log.info(
                        "api.drain_finished", vs=format_vs(vs), rs=format_rs(rs),
                        outcome=event.outcome.value, elapsed=round(event.elapsed, 3),
                        removed=event.removed,
                    )
                    running.reported = True
                for queue in running.watchers:
                    queue.put_nowait(event)

    # ---- persistence and propagation -----------------------------------------------------

    def _persist(self) -> None:
        if self._state_path is not None:
            save_state(self._state_path, self.store, now=self._wall())

    def _propagate(self, entries: list[OverrideEntry]) -> None:
        if self._publish is not None:
            self._publish(encode_message(self.store.origin, entries))
