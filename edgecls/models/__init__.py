"""Backbone zoo behind one registry."""

from edgecls.models.registry import create_model, get_spec, list_models, load_plugins, register_model

__all__ = ["create_model", "get_spec", "list_models", "load_plugins", "register_model"]
