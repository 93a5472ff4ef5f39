"""edgetile.runtime.links: telling the outside world, and listening to the vehicle.

- mqtt: publish detections to a broker (paho-mqtt, extra ``mqtt``).
- mavlink: read the vehicle's pose and send detections to a ground station (pymavlink, extra
  ``mavlink``).

Links may use the geometry of :mod:`edgetile.runtime.geo` (a MAVLink pose is a CameraPose) and know
nothing of the daemon. Importing this package costs nothing: paho-mqtt and pymavlink are imported
when a publisher, listener or sender is made.
"""
