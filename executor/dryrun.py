"""``--dryrun``: what a build would do, resolved against the registries, with nothing built.

The fork's ``--dryrun`` renders its plan and stops; kiln's plan says what a person checking a
CI change wants to see before spending a build on it: the stages that would be built, each base
image pinned to the digest the registry serves now, the instructions of each stage with their
Dockerfile lines, and the destinations (already checked for push permission by then).
"""

from __future__ import annotations

import logging

import click

from executor.dockerfile.stages import BuildPlan, Stage
from executor.errors import DockerfileError, ImageError
from executor.image.model import Platform
from executor.image.reference import ImageRef
from executor.options import BuildOptions
from executor.registry.client import RegistryClient

log = logging.getLogger("kiln")


def print_plan(options: BuildOptions, plan: BuildPlan, stages: list[Stage],
               client: RegistryClient, platform: Platform) -> None:
    """Resolve each stage's base image and print the plan on stdout (the fork prints its plan
    there too, so it can be saved apart from the log)."""
    log.info("Dry run: resolving %d stages; nothing will be built or pushed", len(stages))
    lines = [f"Plan for {options.dockerfile.name} ({len(stages)} of {len(plan.stages)} "
             f"stages, platform {platform}):"]
    resolved: dict[str, str] = {}
    for stage in stages:
        base = _base(stage, plan, client, platform, resolved)
        lines.append(f"stage {stage.index} '{stage.display_name}' FROM {base}  "
                     f"({stage.location})")
        lines += [f"  {inst.location}  {inst.original.split(chr(10), 1)[0]}"
                  for inst in stage.instructions]
    if options.no_push:
        lines.append("destinations: none (--no-push)")
    else:
        checked = "push not checked" if options.skip_push_permission_check else "push permitted"
        lines.append("destinations:")
        lines += [f"  {destination} ({checked})" for destination in options.destinations]
    for line in lines:
        click.echo(line)


def _base(stage: Stage, plan: BuildPlan, client: RegistryClient, platform: Platform,
          resolved: dict[str, str]) -> str:
    """``name@digest`` of a stage's base image, ``stage N`` for a stage, or ``scratch``."""
    if stage.base_stage is not None:
        return f"stage {stage.base_stage} '{plan.stages[stage.base_stage].display_name}'"
    if stage.base.lower() == "scratch":
        return "scratch"
    if stage.base not in resolved:
        try:
            ref = ImageRef.parse(stage.base)
        except ImageError as exc:
            raise DockerfileError(str(stage.location), str(exc)) from None
        target = Platform.parse(stage.platform) if stage.platform else platform
        resolved[stage.base] = client.resolve(ref, target).manifest_digest
    return f"{stage.base}@{resolved[stage.base]}"
