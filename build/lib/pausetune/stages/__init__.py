"""Stages: one module per `pausetune` subcommand; each imports only pausetune.core."""
