"""Monitoring: alert rules, webhooks, the recent-traffic window, cross-region scrapes.

May import: ``router.runtime`` and everything below it.
"""
