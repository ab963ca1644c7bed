"""Prefect flows: orchestration only. Every task calls one boneage library function."""
