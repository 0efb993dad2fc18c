"""Integrations: the pipeline's events delivered to the tools of a monitoring setup.

* `bridge`: a thread of the supervisor that SUBscribes to the sink's ``events`` PUB socket and hands every
  event to the outputs below; the pipeline never waits for them (each keeps its own bounded queue);
* `mqtt`: events, retained presence per person, kiosk decisions and availability on an MQTT broker;
* `homeassistant`: Home Assistant MQTT discovery messages for the enrolled people;
* `webhooks`: chosen event types POSTed as JSON with an HMAC-SHA256 signature;
* `metrics`: the supervisor's figures as Prometheus text (``/metrics``, ``run --metrics HOST:PORT``).
"""
