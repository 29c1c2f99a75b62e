"""Webhooks: an account's events POSTed to its merchants' back ends, signed, retried, in
version order per order, never lost.

    outbox.py         the delivery rows, written in each event's own transaction
    destinations.py   which URLs and addresses a hook may reach (SSRF), and the HTTP client
                      that connects only to the address it checked
    dispatcher.py     the delivery engine: claims due deliveries, POSTs them, retries
    subscriptions.py  managing hooks: the service functions REST and GraphQL call
    rest.py           Dintero's Hooks API shape over the front door
"""
