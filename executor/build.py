"""The build loop: for each stage, base image into the root, then apply -> snapshot -> layer.

This module owns the order of things and nothing else: parsing is in ``executor.dockerfile``,
what an instruction does is in ``executor.instructions``, how changes become a layer is in
``snapshot``, and where the image goes is in ``executor.publish``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, cast

from executor import stageroot
from executor.basecache import BaseImageCache
from executor.cache import (
    CachedLayer,
    CacheSettings,
    KeyChain,
    LayerCache,
    chain,
    stage_seed,
    written_content,
)
from executor.context import BuildContext
from executor.contexts import local_context
from executor.dockerfile.parse import Instruction, parse_dockerfile, parse_text
from executor.dockerfile.stages import (
    BuildPlan,
    Stage,
    build_order,
    check_defined_before,
    plan_build,
    unused_build_args,
)
from executor.dryrun import print_plan
from executor.errors import DockerfileError, ImageError, KilnError, RegistryError, at_step
from executor.image import model
from executor.image.blob import VerifyingReader
from executor.image.built import BuiltImage
from executor.image.model import ImageConfig, Layer, Platform, compression_of
from executor.image.reference import ImageRef
from executor.inplace import check_in_place_allowed, executor_image_paths
from executor.instructions import add, copy, metadata, run
from executor.instructions.metadata import Step
from executor.instructions.placed import recover as recover_placements
from executor.instructions.state import StageState
from executor.options import BuildOptions, read_secrets
from executor.publish import (
    check_local_outputs,
    check_push_permissions,
    make_client,
    publish,
    transfer_line,
)
from executor.registry.client import PARTIAL_SUFFIX, Cancellation, RegistryClient
from executor.registry.feed import DownloadFailed, DownloadFeed, DownloadRestarted, FollowingReader
from executor.report import BuildRecorder
from executor.sandbox import Sandbox
from executor.tracing import start_tracing
from executor.workspace import remove_stale_partials, temporary_workspace
from snapshot.compress import Compression, open_decompressed
from snapshot.errors import CorruptLayerError, UnsafeLayerError
from snapshot.extract import extract_layer
from snapshot.ignore import IgnoreList
from snapshot.layer import write_layer
from snapshot.snapshot import (
    Changes,
    Snapshot,
    diff_snapshots,
    layer_order,
    settle_ctimes,
    take_partial_snapshot,
    take_snapshot,
    wait_for_clock_tick,
)

if TYPE_CHECKING:  # the attestation modules load only for --attest (see _attestations)
    from executor.attest.collect import Pending

log = logging.getLogger("kiln")

Handler = Callable[[StageState, Instruction], Step]

#: ``created`` of config and history under ``--reproducible`` (kaniko: ``mutate.Canonical``).
EPOCH = "1970-01-01T00:00:00Z"

HANDLERS: dict[str, Handler] = {
    "RUN": run.apply_run,
    "COPY": copy.apply_copy,
    "ADD": add.apply_add,
    "ENV": metadata.apply_env,
    "ARG": metadata.apply_arg,
    "LABEL": metadata.apply_label,
    "MAINTAINER": metadata.apply_maintainer,
    "WORKDIR": metadata.apply_workdir,
    "USER": metadata.apply_user,
    "CMD": metadata.apply_cmd,
    "ENTRYPOINT": metadata.apply_entrypoint,
    "EXPOSE": metadata.apply_expose,
    "SHELL": metadata.apply_shell,
    "STOPSIGNAL": metadata.apply_stopsignal,
    "VOLUME": metadata.apply_volume,
    "HEALTHCHECK": metadata.apply_healthcheck,
    "ONBUILD": metadata.apply_onbuild,
}


@dataclass
class Workspace:
    """kiln's own directories: blobs (pulled and built layers) and scratch roots."""

    kiln_dir: Path

    @property
    def blobs(self) -> Path:
        return self.kiln_dir / "blobs"

    @property
    def roots(self) -> Path:
        return self.kiln_dir / "roots"

    @property
    def scratch(self) -> Path:
        """Temporary files of instructions (downloads, heredoc sources, mount copies)."""
        return self.kiln_dir / "tmp"

    @property
    def caches(self) -> Path:
        """``RUN --mount=type=cache`` directories, by id."""
        return self.kiln_dir / "cache"

    def create(self) -> Workspace:
        for directory in (self.blobs, self.roots, self.scratch, self.caches):
            directory.mkdir(parents=True, exist_ok=True)
        # A SIGKILLed build's downloads and layers (snapshot/layer.py names its temp files).
        remove_stale_partials(self.blobs, (f"*{PARTIAL_SUFFIX}", ".layer-*.tmp"))
        return self


@dataclass
class Builder:
    """Builds the stages of one plan into one root."""

    options: BuildOptions
    plan: BuildPlan
    client: RegistryClient
    workspace: Workspace
    context: BuildContext
    platform: Platform
    ignore: IgnoreList
    built: dict[int, BuiltImage] = field(default_factory=dict)
    root_holds: int | None = None  # the stage whose filesystem the root holds now
    source_roots: dict[str, Path] = field(default_factory=dict)
    pulled: dict[str, BuiltImage] = field(default_factory=dict)
    secrets: dict[str, bytes] = field(default_factory=dict)
    current_stage: int = -1
    stage_args: dict[int, dict[str, str]] = field(default_factory=dict)
    cache: LayerCache | None = None  # --cache
    fetched: list[tuple[str, str]] = field(default_factory=list)  # ADD URLs (for --attest)
    # Stages whose filesystem was moved out of the root, whole, for a later COPY --from.
    stage_roots: dict[int, Path] = field(default_factory=dict)
    # Digests of the layers this build wrote from its snapshots: they hold no ignored path.
    made_layers: set[str] = field(default_factory=set)
    # By stage: what its pulled layers hold at ignored paths (stageroot.ignored_content),
    # read in the background while the stage runs, for moving its root out at the end.
    ignored_reads: dict[int, Future[list[stageroot.Made] | None]] = field(default_factory=dict)
    recorder: BuildRecorder = field(default_factory=BuildRecorder)  # the build report's timings
    # --single-snapshot: the paths the stage's steps moved only in ctime (Step.settled).
    stage_settled: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.options.root

    def build(self) -> BuiltImage:
        stages = self._stages_to_build()
        for stage in stages:
            log.info("Building stage '%s' [idx: '%d', base-idx: '%d']", stage.base, stage.index,
                     -1 if stage.base_stage is None else stage.base_stage)
            with self.recorder.stage(stage.index, stage.display_name):
                self.built[stage.index] = self._build_stage(stage)
        unused = unused_build_args(self.plan, stages)
        if unused:
            log.warning("[Warning] One or more build-args [%s] were not consumed",
                        " ".join(unused))
        return self.built[self.plan.target]

    def _stages_to_build(self) -> list[Stage]:
        """Like kaniko, every stage up to the target (only what it needs with
        --skip-unused-stages), plus the later stages they read, each after what it reads."""
        if self.options.skip_unused_stages:
            wanted = {self.plan.target}
        else:
            wanted = {s.index for s in self.plan.stages if s.index <= self.plan.target}
        stages = build_order(self.plan, wanted)
        check_defined_before(self.plan, stages)
        return stages

    def _build_stage(self, stage: Stage) -> BuiltImage:
        self.current_stage = stage.index
        base = self._base_image(stage)
        snapshot = self._prepare_root(stage, base)
        config = base.config.copy()
        config.data["created"] = EPOCH if self.options.reproducible else _now()
        state = StageState(stage=stage, plan=self.plan, config=config, root=self.root,
                           context=self.context,
                           sandbox=Sandbox(self.root, in_place=self.options.in_place,
                                           scratch=self.workspace.scratch),
                           created=config.data["created"], source_root=self._source_root,
                           ignore=self.ignore, scratch_dir=self.workspace.scratch,
                           kiln_dir=self.workspace.kiln_dir, secrets=self.secrets,
                           fetched=self.fetched)
        if stage.base_stage is not None:  # BuildKit: a stage built FROM a stage keeps its ARGs
            state.args.update(self.stage_args.get(stage.base_stage, {}))
        layers = list(base.layers)
        triggers = list(config.container.get("OnBuild") or [])
        config.container["OnBuild"] = None
        log.info("Executing %d build triggers", len(triggers))
        instructions = [*self._triggers(stage, triggers), *stage.instructions]
        keys = (KeyChain(stage_seed(base.cache_key, self.platform, self._layer_settings()))
                if self.cache is not None else None)
        self.stage_settled = []
        for inst in instructions:
            snapshot = self._apply(state, inst, snapshot, layers, keys)
        if self.options.single_snapshot:
            # The sandbox's mount points for RUN moved /etc's ctime in any RUN of the stage,
            # and a RUN --mount's the ctime of its mount points' parents.
            with at_step(str(stage.location)):  # the stage's one layer: named by its FROM
                snapshot = self._commit_layer(state, snapshot, "kiln: single snapshot of the "
                                              "stage (--single-snapshot)", layers,
                                              (*self.stage_settled,
                                               *state.sandbox.settled_paths())).snapshot
        self.root_holds = stage.index
        self.stage_args[stage.index] = dict(state.args)
        if self.options.labels:  # --label, as kaniko applies it to every stage's image
            config.container["Labels"] = {**(config.container.get("Labels") or {}),
                                          **self.options.labels}
        return BuiltImage(config, layers, base.manifest_type, base.source, snapshot,
                          keys.key if keys else "scratch")

    def _triggers(self, stage: Stage, triggers: list[str]) -> list[Instruction]:
        """ONBUILD triggers of the base image, run first, reported at the FROM line."""
        out: list[Instruction] = []
        for text in triggers:
            try:
                parsed = parse_text(text, str(stage.location))
            except DockerfileError as exc:
                raise DockerfileError(str(stage.location), f"ONBUILD trigger {text!r}: {exc}") \
                    from None
            out.extend(Instruction(i.kind, i.args, i.flags, i.json, i.original, stage.location,
                                   i.heredocs, i.sub_kind) for i in parsed.instructions)
        return out

    def _apply(self, state: StageState, inst: Instruction, snapshot: Snapshot,
               layers: list[Layer], keys: KeyChain | None) -> Snapshot:
        handler = HANDLERS.get(inst.kind)
        if handler is None:
            raise inst.error(f"{inst.kind} is not supported")
        log.info("%s", inst.original.split("\n", 1)[0])
        with at_step(str(inst.location)), self.recorder.step(self.current_stage, inst.original,
                                                             str(inst.location)):
            return self._apply_step(state, inst, handler, snapshot, layers, keys)

    def _apply_step(self, state: StageState, inst: Instruction, handler: Handler,
                    snapshot: Snapshot, layers: list[Layer], keys: KeyChain | None) -> Snapshot:
        if inst.kind in ("RUN", "COPY", "ADD", "WORKDIR"):
            wait_for_clock_tick(snapshot)
        if keys is not None:  # before the step: the ARGs and ENVs it sees
            key = chain(keys.key, inst.original, [h.content for h in inst.heredocs],
                        sorted(state.expansion_env().items()))
            if inst.kind == "RUN" and self.options.cache_run_layers:
                return self._run_with_cache(state, inst, snapshot, layers, keys, key)
            keys.key = key
        with self.recorder.phase("run"):
            step = handler(state, inst)
        self.stage_settled.extend(step.settled)
        if not step.touches_fs or self.options.single_snapshot:
            # --single-snapshot: the stage's changes become one layer at its end.
            if step.history is not None or step.touches_fs:
                state.config.add_empty_history(step.history or inst.original, state.created)
            return snapshot
        committed = self._commit_layer(state, snapshot, step.history or inst.original, layers,
                                       step.settled, step.written)
        if keys is not None and inst.kind in ("COPY", "ADD"):
            # Their inputs are files, not text: the key goes on from what they wrote.
            keys.key = chain(keys.key, written_content(self.root, committed.changes))
        elif keys is not None and inst.kind == "RUN":  # --cache-run-layers=false
            keys.key = chain(keys.key, _layer_id(committed.layer))
        return committed.snapshot

    def _run_with_cache(self, state: StageState, inst: Instruction, snapshot: Snapshot,
                        layers: list[Layer], keys: KeyChain, key: str) -> Snapshot:
        """RUN with --cache: the stored layer when there is one, else run it and store it.
        Either way the chain goes on from the layer the root now holds."""
        assert self.cache is not None
        command = inst.original.split("\n", 1)[0]
        keyed = not _reads_unkeyed_files(state, inst)
        if keyed:
            found = self.cache.lookup(key, command)
            self.recorder.cache(found is not None)
            if found is not None:
                keys.key = chain(key, _layer_id(found.layer))
                return self._apply_cached(state, found, snapshot, layers)
        else:
            log.info("Not caching cmd %s: it mounts files its cache key cannot see", command)
        with self.recorder.phase("run"):
            step = HANDLERS["RUN"](state, inst)
        history = step.history or inst.original
        committed = self._commit_layer(state, snapshot, history, layers, step.settled)
        if keyed:
            self.cache.store_layer(key, committed.layer, history)
        keys.key = chain(key, _layer_id(committed.layer))
        return committed.snapshot

    def _apply_cached(self, state: StageState, found: CachedLayer, snapshot: Snapshot,
                      layers: list[Layer]) -> Snapshot:
        """Apply a layer from the cache as if its RUN had just run."""
        if found.layer is None:  # the RUN changed no file: an empty layer, as BuildKit has
            empty = self._commit_layer(state, snapshot, found.history, layers)
            return empty.snapshot
        with self.recorder.phase("extract"):
            self._extract_layer(found.layer, self.root, self.ignore, "the layer cache")
        self.recorder.layer(found.layer.size, None, None, found.layer.digest)
        layers.append(found.layer)
        state.config.add_layer(found.layer.diff_id, found.history, state.created)
        return take_snapshot(self.root, self.ignore)

    def _commit_layer(self, state: StageState, before: Snapshot, history: str,
                      layers: list[Layer], settled: tuple[str, ...] = (),
                      written: tuple[str, ...] | None = None) -> Committed:
        """Snapshot the root, and write what changed since ``before`` as a new layer.

        ``written``: the paths a step that ran no process wrote (COPY, ADD); only they are
        walked again (see :func:`take_partial_snapshot`), unless it cannot vouch for that.
        """
        new = None
        with self.recorder.phase("snapshot"):
            if written is not None and not settled:
                new = take_partial_snapshot(self.root, self.ignore, before, written)
                if new is not None:
                    log.info("Taking snapshot of files...")
                    if _check_partial_snapshots():
                        _check_partial_snapshot(before, new,
                                                take_snapshot(self.root, self.ignore))
            if new is None:
                log.info("Taking snapshot of full filesystem...")
                new = take_snapshot(self.root, self.ignore)
            changes = diff_snapshots(settle_ctimes(before, new, settled), new)
        if changes.is_empty():
            # BuildKit commits a layer for every RUN, COPY, ADD and WORKDIR, an empty one when
            # nothing changed; kaniko skips it. Docker's image is the reference.
            log.info("No files changed in this command, adding an empty layer.")
        with self.recorder.phase("layer"):
            blob = write_layer(self.root, changes, new, self.workspace.blobs,
                               self._compression(),
                               mtime_ns=0 if self.options.reproducible else None)
        self.recorder.layer(blob.size, blob.uncompressed_size,
                            len(changes.upserts) + len(changes.deletions), blob.digest)
        layer = Layer(blob.path, blob.digest, blob.diff_id, blob.size,
                      _media_type(blob.compression))
        layers.append(layer)
        self.made_layers.add(layer.digest)
        state.config.add_layer(layer.diff_id, history, state.created)
        return Committed(new, changes, layer)

    def _layer_settings(self) -> list[object]:
        """What besides the steps decides a layer's bytes (for the layer cache's keys)."""
        o = self.options  # --ignore-path as given: mount points differ from pod to pod
        return [o.compression, o.compression_level, o.reproducible, sorted(o.ignore_paths),
                o.ignore_var_run, o.in_place]

    def _compression(self) -> Compression:
        level = self.options.compression_level
        return Compression(self.options.compression,  # type: ignore[arg-type]
                           None if level < 0 else level)

    # -- base images -------------------------------------------------------------------

    def _base_image(self, stage: Stage) -> BuiltImage:
        if stage.base_stage is not None:
            previous = self.built.get(stage.base_stage)
            if previous is None:
                raise DockerfileError(str(stage.location),
                                      f"stage {stage.base!r} was not built (check --target and "
                                      "--skip-unused-stages)")
            return previous
        platform = Platform.parse(stage.platform) if stage.platform else self.platform
        if stage.base.lower() == "scratch":
            log.info("No base image, nothing to extract")
            return BuiltImage(ImageConfig.empty(platform), [])
        image = self._pull(stage.base, platform, str(stage.location))
        if stage.platform or self.options.custom_platform:
            return _for_platform(image, platform, stage.base, str(stage.location))
        return image

    def _pull(self, name: str, platform: Platform, where: str) -> BuiltImage:
        if name in self.pulled:
            return self.pulled[name]
        try:
            ref = ImageRef.parse(name)
        except ImageError as exc:
            raise DockerfileError(where, str(exc)) from None
        log.info("Retrieving image manifest %s", name)
        base_cache = BaseImageCache(self.options.cache_dir, self.options.cache_ttl_s)
        resolved = base_cache.resolve(ref, platform) if ref.digest else None
        if resolved is None:
            log.info("Retrieving image %s from registry %s", ref, ref.registry)
            with self.recorder.phase("pull", {"kiln.image": str(ref),
                                              "kiln.registry": ref.registry}):
                resolved = self.client.resolve(ref, platform)
        layers = resolved.layer_files(self.workspace.blobs)
        base_cache.copy_layers(name, resolved.manifest_digest, layers)
        image = BuiltImage(resolved.config, layers, resolved.manifest.media_type, ref,
                           cache_key="image:" + resolved.manifest_digest)
        self.pulled[name] = image
        return image

    def _fetch_layers(self, image: BuiltImage
                      ) -> Generator[tuple[Layer, Future[Layer], DownloadFeed], None, None]:
        """Start downloading every missing layer; yields each in order with its download's
        future and the feed an extraction can follow the download through."""
        pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="kiln-pull")
        cancel = Cancellation()

        def fetch(layer: Layer, feed: DownloadFeed) -> Layer:
            try:
                if not layer.path.exists():
                    assert image.source is not None
                    started = time.monotonic()
                    self.client.fetch_blob(image.source, layer.descriptor(), layer.path,
                                           cancel=cancel, feed=feed)
                    self.recorder.add("pull", time.monotonic() - started, {
                        "kiln.layer.digest": layer.digest,
                        "kiln.layer.compressed_bytes": layer.size,
                        "kiln.registry": image.source.registry})
                    log.info("%s", transfer_line("Pulled", layer.digest, layer.size,
                                                 time.monotonic() - started, True))
            except BaseException:
                feed.fail()
                raise
            feed.finish(layer.path)
            return layer

        feeds = [DownloadFeed() for _ in image.layers]
        futures = [pool.submit(fetch, layer, feed)
                   for layer, feed in zip(image.layers, feeds, strict=True)]
        try:
            yield from zip(image.layers, futures, feeds, strict=True)
        except BaseException:
            # A failure or a stop signal: downloads still running are cut, not waited for.
            cancel.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            for feed in feeds:  # a reader waiting on a download that will never run
                feed.fail()
            raise
        pool.shutdown(wait=True)

    def _extract(self, image: BuiltImage, root: Path, ignore: IgnoreList) -> None:
        """Extract ``image``'s layers in order; later downloads overlap earlier extraction,
        and a layer still downloading is extracted as its bytes arrive."""
        downloads = self._fetch_layers(image)
        source = str(image.source) if image.source else "the base stage"
        try:
            for layer, future, feed in downloads:
                started = time.monotonic()
                if future.done():
                    self._extract_layer(future.result(), root, ignore, source)
                else:
                    self._extract_following(layer, future, feed, root, ignore, source)
                self.recorder.add("extract", time.monotonic() - started, {
                    "kiln.layer.digest": layer.digest, "kiln.layer.compressed_bytes": layer.size})
                log.debug("extracted %s in %.2fs", layer.digest, time.monotonic() - started)
        finally:
            downloads.close()  # now, not when the traceback is freed: cuts running downloads

    @staticmethod
    def _extract_following(layer: Layer, future: Future[Layer], feed: DownloadFeed,
                           root: Path, ignore: IgnoreList, source: str) -> None:
        """Extract a layer while it downloads. A failure is the download's when the download
        failed too (its error says more than a stream cut short); a download that started
        over raises :class:`DownloadRestarted`, for the base to be extracted again."""
        following = FollowingReader(feed)
        try:
            with following:
                Builder._extract_stream(cast(BinaryIO, following), layer, root, ignore,
                                        source)
        except UnsafeLayerError:
            raise
        except (DownloadFailed, DownloadRestarted, CorruptLayerError, ImageError):
            # The extraction reports a stream error however the stream ended: look at why.
            future.result()  # raises the download's own error, if it failed
            if following.restarted:
                raise DownloadRestarted() from None
            raise
        future.result()

    @staticmethod
    def _extract_layer(layer: Layer, root: Path, ignore: IgnoreList,
                       image: str = "the image") -> None:
        """Apply one downloaded layer blob, checking as it is read its digest and the digest of
        what it uncompresses to against the config's ``rootfs.diff_ids`` (containerd refuses
        to unpack an image whose layers and diff_ids disagree, so kiln must not push one)."""
        with open(layer.path, "rb") as raw:
            Builder._extract_stream(raw, layer, root, ignore, image)

    @staticmethod
    def _extract_stream(raw: BinaryIO, layer: Layer, root: Path, ignore: IgnoreList,
                        image: str) -> None:
        """Apply the layer blob read from ``raw`` (see :meth:`_extract_layer`)."""
        verified = VerifyingReader(raw, layer.digest)
        stream = open_decompressed(cast(BinaryIO, verified), compression_of(layer.media_type))
        uncompressed = VerifyingReader(stream, layer.diff_id)
        extract_layer(root, cast(BinaryIO, uncompressed), ignore=ignore, layer_name=layer.digest)
        verified.verify()
        diff_id = uncompressed.finish()
        if diff_id != layer.diff_id:
            raise ImageError(f"{image}: layer {layer.digest} uncompresses to diff_id {diff_id}, "
                             f"but the image config's rootfs.diff_ids says {layer.diff_id}")

    def _prepare_root(self, stage: Stage, base: BuiltImage) -> Snapshot:
        """Put the base's filesystem in the root; free when the root already holds it."""
        if (stage.base_stage is not None and stage.base_stage == self.root_holds
                and base.snapshot is not None):
            return base.snapshot
        if (self.root_holds is not None or base.layers) and not self._keep_root_for_copies():
            clear_root(self.root, self.ignore)
        if base.layers and not self._restore_kept_stage(stage):
            log.info("Unpacking rootfs as cmd %s requires it.",
                     stage.instructions[0].original.split("\n", 1)[0]
                     if stage.instructions else "FROM")
            self._extract_with_retries(base)
            self._read_ignored_content_ahead(stage, base)
        self.root_holds = None
        log.info("Initializing snapshotter ...")
        log.info("Taking snapshot of full filesystem...")
        with self.recorder.phase("snapshot"):
            return take_snapshot(self.root, self.ignore)

    def _extract_with_retries(self, base: BuiltImage) -> None:
        """Extract the base into the root, starting over on a failure when
        ``--image-fs-extract-retry`` allows it (kaniko's flag). A layer refused as unsafe is
        never retried; a corrupt cached blob is dropped so the retry downloads it again.

        A layer whose download started over while it was being extracted (a connection cut
        and retried) is not a failed attempt: its blob is complete by then, and the base is
        extracted again from the files, once, whatever the flag says."""
        attempts = 1 + self.options.image_fs_extract_retry
        attempt = 1
        restarted = False
        while True:
            try:
                self._extract(base, self.root, self.ignore)
                return
            except UnsafeLayerError:
                raise
            except DownloadRestarted:
                if restarted:
                    raise KilnError("a base layer's download started over twice while it was "
                                    "extracted") from None
                restarted = True
                log.info("A base layer's download started over; extracting the base again")
                clear_root(self.root, self.ignore)
                continue
            except (CorruptLayerError, OSError) as exc:
                if attempt == attempts:
                    raise
                log.warning("extracting the base image failed (%s); retrying (%d of %d)", exc,
                            attempt, attempts - 1)
                if isinstance(exc, CorruptLayerError):
                    for layer in base.layers:
                        layer.path.unlink(missing_ok=True)
                clear_root(self.root, self.ignore)
                attempt += 1

    def _read_ignored_content_ahead(self, stage: Stage, base: BuiltImage) -> None:
        """Start reading what the base's pulled layers hold at ignored paths, when a later
        stage copies from this one: :meth:`_keep_root_for_copies` needs it when the stage
        ends, and it takes reading the layers through once more (a quarter of a second for
        a Debian base), which a thread does while the stage's commands run."""
        if (self.options.in_place or self.ignore.globs
                or not self._copied_from_later(stage.index)):
            return
        pulled = [layer for layer in base.layers if layer.digest not in self.made_layers]
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiln-ignored")
        self.ignored_reads[stage.index] = reader.submit(
            stageroot.ignored_content, pulled, self._ignored_inside_root())
        reader.shutdown(wait=False)

    def _ignored_inside_root(self) -> frozenset[str]:
        return frozenset(p for p in self.ignore.paths if p)

    def _keep_root_for_copies(self) -> bool:
        """Move the root's filesystem out for a later COPY --from of the stage it holds, or a
        later stage built FROM it, rather than delete it (:mod:`executor.stageroot`); False,
        with nothing moved, where that does not apply: no later copy of it or stage on it,
        in place, an ignored glob, kiln's directory on another filesystem, or an image with
        more than it can make at ignored paths."""
        held = self.root_holds
        if (held is None or held in self.stage_roots or self.options.in_place
                or self.ignore.globs or not (self._copied_from_later(held)
                                             or self._built_from_later(held, besides=-1))):
            return False
        image = self.built.get(held)
        if image is None or os.stat(self.root).st_dev != os.stat(self.workspace.roots).st_dev:
            return False
        ahead = self.ignored_reads.pop(held, None)
        content = ahead.result() if ahead is not None else stageroot.ignored_content(
            [layer for layer in image.layers if layer.digest not in self.made_layers],
            self._ignored_inside_root())
        if content is None:
            return False
        target = Path(tempfile.mkdtemp(prefix=f"stage{held}-", dir=self.workspace.roots))
        stageroot.move_root(self.root, self.ignore, target)
        if not stageroot.make_ignored(target, content):
            # The move is done: the root is as clear_root leaves it; the copy extracts.
            shutil.rmtree(target, ignore_errors=True)
            return True
        log.debug("stage %d's filesystem moved to %s for later copies", held, target)
        self.stage_roots[held] = target
        return True

    def _restore_kept_stage(self, stage: Stage) -> bool:
        """Move the filesystem of the stage ``stage`` is built FROM back into the cleared root,
        when it was moved out whole (:meth:`_keep_root_for_copies`) and nothing else needs it:
        no stage still to build copies from it or is built FROM it too. False, with nothing
        done, where the base has to be extracted instead."""
        held = stage.base_stage
        if held is None or held not in self.stage_roots or self._copied_from_later(held) \
                or self._built_from_later(held, besides=stage.index):
            return False
        kept = self.stage_roots.pop(held)
        for ref in [ref for ref, path in self.source_roots.items() if path == kept]:
            del self.source_roots[ref]
        stageroot.restore_root(kept, self.ignore, self.root)
        shutil.rmtree(kept, ignore_errors=True)  # what it had at ignored paths
        log.info("Moved the filesystem of stage %d back into the root, not unpacked again",
                 held)
        return True

    def _built_from_later(self, index: int, besides: int) -> bool:
        """Is a stage not built yet, other than ``besides``, built FROM stage ``index``?"""
        return any(s.base_stage == index for s in self.plan.stages
                   if s.index != besides and s.index not in self.built)

    def _copied_from_later(self, index: int) -> bool:
        """Does a stage not built yet copy from (or mount) stage ``index`` by a name the
        plan resolves as written? (A ``--from`` made of ARGs is not seen: it extracts.)"""
        for stage in self.plan.stages:
            if stage.index == index or stage.index in self.built:
                continue
            for inst in stage.instructions:
                for flag in inst.flags:
                    ref = _from_ref(flag)
                    found = self.plan.stage_by_ref(ref) if ref else None
                    if found is not None and found.index == index:
                        return True
        return False

    def _source_root(self, inst: Instruction, ref: str) -> Path:
        """A directory holding the filesystem of a stage or an image, for COPY --from."""
        if ref in self.source_roots:
            return self.source_roots[ref]
        stage = self.plan.stage_by_ref(ref)
        if stage is not None:
            image = self.built.get(stage.index)
            if image is None and stage.index == self.current_stage:
                raise inst.error(f"circular dependency detected on stage: "
                                 f"{stage.display_name}")
            if image is None:
                raise inst.error(f"{inst.kind} --from={ref}: stage {ref!r} was not built "
                                 "(check --target and --skip-unused-stages)")
            if stage.index in self.stage_roots:
                self.source_roots[ref] = self.stage_roots[stage.index]
                return self.source_roots[ref]
        else:
            if ref.isdigit():
                raise inst.error(f"COPY --from={ref}: there is no stage {ref}")
            try:
                image = self._pull(ref, self.platform, str(inst.location))
            except (RegistryError, ImageError) as exc:
                raise inst.error(f"{inst.kind} --from={ref}: no stage of that name, and pulling "
                                 f"it as an image failed: {exc}") from None
        target = Path(tempfile.mkdtemp(prefix="from-", dir=self.workspace.roots))
        none = IgnoreList(root=target, paths=frozenset(), globs=())
        self._extract(image, target, none)
        self.source_roots[ref] = target
        return target


def _for_platform(image: BuiltImage, platform: Platform, name: str, where: str) -> BuiltImage:
    """A single-platform base that is not the platform asked for is used as it is, with
    BuildKit's warning, and the image built on it says the platform asked for (BuildKit and
    kaniko both write the target's os/architecture into the config)."""
    os_name, arch = image.config.data.get("os"), image.config.data.get("architecture")
    if not os_name or not arch:
        return image
    variant = image.config.data.get("variant")
    pulled = Platform(str(os_name), str(arch), str(variant) if variant else None)
    if platform.matches(pulled):
        return image
    log.warning('InvalidBaseImagePlatform: Base image %s was pulled with platform "%s", '
                'expected "%s" for current build (%s)', name, pulled, platform, where)
    config = image.config.copy()
    config.data["os"], config.data["architecture"] = platform.os, platform.architecture
    config.data.pop("variant", None)
    if platform.variant:
        config.data["variant"] = platform.variant
    return dataclasses.replace(image, config=config)


class Committed(NamedTuple):
    """A step's end: the root's snapshot, what changed, and the layer (None: no change)."""

    snapshot: Snapshot
    changes: Changes
    layer: Layer | None


def _check_partial_snapshots() -> bool:
    """``KILN_CHECK_PARTIAL_SNAPSHOT=1``: take the full snapshot beside each partial one and
    fail the build where they differ (a self-check for tests; it costs the time saved)."""
    return os.environ.get("KILN_CHECK_PARTIAL_SNAPSHOT", "") in ("1", "true")


def _check_partial_snapshot(before: Snapshot, partial: Snapshot, full: Snapshot) -> None:
    """Raise if ``partial`` is not what the full walk ``full`` found, entry for entry."""
    if partial.entries == full.entries:
        return
    differ = sorted((path for path in partial.entries.keys() | full.entries.keys()
                     if partial.entries.get(path) != full.entries.get(path)), key=layer_order)
    changes = diff_snapshots(before, partial) == diff_snapshots(before, full)
    shown = ", ".join("/" + path for path in differ[:5])
    more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
    raise KilnError(f"KILN_CHECK_PARTIAL_SNAPSHOT: the partial snapshot differs from the full "
                    f"walk at {shown}{more} (layer changes {'equal' if changes else 'differ'})")


def _layer_id(layer: Layer | None) -> str:
    """What a RUN's output adds to the cache key: its layer's diff_id."""
    return layer.diff_id if layer is not None else "no change"


def _reads_unkeyed_files(state: StageState, inst: Instruction) -> bool:
    """A RUN mounting files of the context or of another stage (a bind mount, BuildKit's
    default type, or any mount with ``from=``): its key would not change when they do."""
    try:
        specs = run.mount_specs(state, inst)
    except KilnError:
        return True  # the RUN itself will say what is wrong
    return any(spec.type == "bind" or spec.from_ref is not None for spec in specs)


def clear_root(root: Path, ignore: IgnoreList, rel: str = "") -> None:
    """Remove everything under ``root`` that is not ignored (and keep ignored paths' parents)."""
    for entry, child, holds_ignored in stageroot.root_entries(root, ignore, rel):
        if holds_ignored:
            clear_root(root, ignore, child)
        elif entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def _from_ref(flag: str) -> str | None:
    """The stage a ``--from=REF`` flag, or a ``--mount=...,from=REF`` flag, names."""
    if flag.startswith("--from="):
        return flag[len("--from="):]
    if flag.startswith("--mount="):
        for part in flag[len("--mount="):].split(","):
            key, _, value = part.partition("=")
            if key.strip() == "from":
                return value.strip()
    return None


def delete_filesystem(root: Path, ignore: IgnoreList, workspace: Workspace) -> None:
    """``--cleanup`` in place: remove the built filesystem, on success and on failure.

    What stays is what the build ignored (the executor under the kiln dir, mounts such as the
    context and the credentials, /var/run) and the blob cache, whose files are checked against
    their digests when read; so a second build in the same container starts from the executor
    image alone (kaniko #2793, #2271).
    """
    log.info("Deleting filesystem...")
    clear_root(root, ignore)
    shutil.rmtree(workspace.roots, ignore_errors=True)


def _layer_cache(options: BuildOptions, client: RegistryClient, workspace: Workspace,
                 platform: Platform) -> LayerCache | None:
    """The layer cache ``--cache`` asks for, in ``--cache-repo`` or next to the destination."""
    if not options.cache:
        return None
    if options.single_snapshot:
        log.info("--cache is not used with --single-snapshot: the stage is one layer")
        return None
    repo = options.cache_layout or ImageRef.parse(options.cache_repository)
    settings = CacheSettings(repo, options.cache_ttl_s, not options.no_push_cache)
    log.info("Using layer cache %s (layers kept %s)", settings.name,
             f"{options.cache_ttl_s / 3600:g}h")
    return LayerCache(settings, client, workspace.blobs, platform)


def _attestations(options: BuildOptions, builder: Builder, started: datetime) -> Pending | None:
    """``--attest``: the facts provenance needs and the SBOM's scan of the target's root,
    taken now, before ``--cleanup`` removes it."""
    if not options.attest:
        return None
    from executor.attest.collect import gather

    return gather(options, started=started, platform=str(builder.platform),
                  base_digests={name: image.cache_key.removeprefix("image:")
                                for name, image in builder.pulled.items()},
                  root_is_target=builder.root_holds == builder.plan.target,
                  skip=builder.ignore.is_ignored, secrets=builder.secrets,
                  fetched=builder.fetched)


def _media_type(compression: str) -> str:
    return {"gzip": model.DOCKER_LAYER_GZIP, "zstd": model.OCI_LAYER_ZSTD,
            "none": model.OCI_LAYER}[compression]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@contextlib.contextmanager
def _workspace(options: BuildOptions) -> Iterator[Workspace]:
    """kiln's state directory: ``--kaniko-dir``, or a temporary one for sandbox builds."""
    if options.in_place or options.kaniko_dir_given:
        yield Workspace(options.kaniko_dir).create()
        return
    with temporary_workspace() as temp:  # one a killed build left is removed on the way in
        yield Workspace(temp).create()


def run_build(options: BuildOptions) -> str:
    """Build the image ``options`` describe and publish it; returns the manifest digest."""
    if options.in_place:
        check_in_place_allowed(options.kaniko_dir, options.force)
    check_local_outputs(options)  # a directory given as --tar-path fails now, not at the end
    with local_context(options) as local:  # git, tarball, bucket: fetched into the kiln dir
        return _build(local)


def _build(options: BuildOptions) -> str:
    started = datetime.now(UTC)  # --attest type=provenance: startedOn
    dockerfile = parse_dockerfile(options.dockerfile)
    platform = Platform.parse(options.custom_platform) if options.custom_platform else Platform()
    plan = plan_build(dockerfile, options.build_args, options.target, platform)
    context = BuildContext.load(options.context, options.dockerfile)
    created_root = not options.in_place and not options.root.exists()
    options.root.mkdir(parents=True, exist_ok=True)
    ignore: IgnoreList | None = None
    recorder = BuildRecorder(trace=start_tracing())
    succeeded = False
    try:
        with _workspace(options) as workspace:
            # A build killed during a RUN --mount left its placements: undo them first.
            recover_placements(workspace.kiln_dir)
            extra = list(options.ignore_paths)
            # A sandbox mounts /proc, /dev and /sys only inside each RUN's own mount namespace:
            # outside a RUN they are the image's directories, written and snapshotted like any
            # other (ADD of an archive holding sys/fs/foo gives /sys/fs/foo, as in Docker).
            if options.in_place:
                extra += executor_image_paths(options.root)
                if options.cache_layout is not None:
                    extra.append(str(options.cache_layout))
            ignore = IgnoreList.for_build(options.root, kiln_dir=workspace.kiln_dir,
                                          extra=extra, ignore_var_run=options.ignore_var_run)
            client = make_client(options)
            if recorder.trace is not None:
                client.transport.on_response = recorder.trace.count_request
            check_push_permissions(options, client)
            builder = Builder(options, plan, client, workspace, context, platform, ignore,
                              secrets=read_secrets(options.secrets),
                              cache=_layer_cache(options, client, workspace, platform),
                              recorder=recorder)
            if options.dryrun:
                print_plan(options, plan, builder._stages_to_build(), client, platform)
                return ""
            if options.pre_cleanup:
                delete_filesystem(options.root, ignore, workspace)
                workspace.create()  # the scratch roots it removed
            image = builder.build()
            if builder.cache is not None:
                image.blob_homes.update(builder.cache.homes)
            attestations = _attestations(options, builder, started)
            with recorder.phase("push", {"kiln.destinations": ", ".join(options.destinations)}):
                digest = publish(image, options, client, attestations, recorder)
            succeeded = True
            return digest
    finally:
        if not options.dryrun:
            recorder.finish(succeeded)
            recorder.publish(options.report_path)
        if options.cleanup and options.in_place and ignore is not None:
            delete_filesystem(options.root, ignore, Workspace(options.kaniko_dir))
        if created_root and options.cleanup:
            shutil.rmtree(options.root, ignore_errors=True)
