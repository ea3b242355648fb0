"""Model adapters. Each family is one file implementing :class:`dgpo.models.base.FlowModel`."""
