"""The ground station (``edgetile station``): every drone's detections over MQTT, one review page, one find per person.

Builds on the daemon's parts (``edgetile.runtime.serve``: the review helpers, the outbox, the guard,
the page), the links (MQTT, MAVLink) and geo (the finds' grouping); nothing below imports it.
"""
