"""Frame sources: video files, image folders, single images, cameras and network streams, and the source process.

Modules: `spec` (what a `--source` names: kinds, stream ids, probing), `files` (lossless file readers),
`live` (cameras and streams: capture thread, drop-oldest queue, reopen with back-off) and `process` (the
source stage process: in-flight frames, acknowledgements, re-sending). Import from those modules.

`--source [ID=]URI`, any number of them, each a stream with its own id:

* a video file (anything OpenCV's FFmpeg backend decodes) and an image folder (files with an image
  suffix, in natural order: ``frame2.png`` before ``frame10.png``) are **file sources**: lossless and
  ordered. Every frame is processed; frames in flight are kept until the sink acknowledges them and are
  re-sent when a worker dies or a timeout passes (below). A single image file is a one-frame file source.
* a camera index (``0``) and an ``rtsp://``, ``rtmp://``, ``http(s)://``, ``udp://``, ``tcp://`` or
  ``srt://`` URL are **live sources**: a capture thread reads as fast as the device delivers into a
  queue of ``sources.live_queue`` frames that drops its *oldest* frame when full (counted as
  ``dropped``), so latency stays bounded when the detectors fall behind; a frame goes to the detectors
  only when one is free (``pipeline.live_inflight`` frames out at once), and then the newest. A live source that stops
  delivering is reopened with exponential back-off (``sources.reconnect_initial_s`` doubling up to
  ``sources.reconnect_max_s``; ``sources.max_reconnects`` failed reopenings in a row end it, 0 = never).
  A camera that cannot be opened at the start (still booting, network down) is retried the same way for
  as long as the run lasts (``sources.open_attempts``: 0 = forever, the default; N gives up after N
  tries), each attempt logged with its state: a monitoring run must not end because a camera is late.
* ``replay:VIDEO`` plays a video file as a live source, paced at the file's own frame rate as a camera
  would deliver it (frames the pipeline cannot keep up with are dropped); ``loop:VIDEO`` does the same
  over and over until stopped. For trying live settings and measuring capture-to-event latency on a
  recording, and for soak runs.

A source that cannot be opened is reported (log + the run's stats + exit code 1) and ends its stream at
once; the other sources go on.

The source process (`SourceStage`) keeps, per file stream, the frames sent but not yet acknowledged by
the sink ("in flight", at most ``pipeline.inflight_frames`` frame indices past the oldest one), each with
its image so it can be sent again. The sink publishes the indices it has received on ``acks``; a frame
unacknowledged after ``pipeline.resend_timeout_s`` (or at once when the supervisor says a worker died:
Control("resend")) is sent again; the sink drops duplicates by (stream, frame index). When a file stream
is exhausted and everything is acknowledged, the source sends EndOfStream(stream, frame_count) straight to
the sink. Frames the detector skips (``pipeline.detect_every`` > 1) go straight to the sink as an empty
FacesMessage ("skip notice") for the tracker to carry boxes over; when an annotated video or a live window
is wanted, every frame's image also goes straight to the sink (``sink_in``), never through the workers.
"""
