"""Workflows: commands that combine the layers below them (evaluate, mine, train, embed).

They sit above ``angle_ray.train`` and ``angle_ray.mining`` (qa-hard calls the training driver)
and below the CLI.
"""
