"""Packages are found, not listed: everything under forgetbench/, and tasks/ and recipes/ installed inside it (as
forgetbench.tasks and forgetbench.recipes, the way TRL ships trl/scripts). The rest of the metadata is in
pyproject.toml; tests/test_packaging.py checks the wheel holds every module and task file."""

from setuptools import find_namespace_packages, find_packages, setup

packages = find_packages(include=["forgetbench", "forgetbench.*"])
# A task folder needs no __init__.py: every folder under tasks/ and recipes/ ships (YAML, data, configs).
for top in ("tasks", "recipes"):
    packages += [f"forgetbench.{name}" for name in find_namespace_packages(include=[top, f"{top}.*"])
                 if "__pycache__" not in name]

setup(packages=packages)
