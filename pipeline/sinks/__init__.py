"""The sink, the last stage of `facestream run`: match descriptors against the gallery, track faces per stream,
decide identities, and write what came out. One module per job, in the order a result goes through them:

* `process`: the sink process (`SinkStage`): its sockets, its receive loop, the gallery refresh;
* `core`: `SinkCore`, the sink's logic without sockets: reorder and de-duplicate results per stream, end
  tracks at scene cuts, track, match, decide, collect kiosk evidence and unknown faces;
* `matcher`: the gallery behind the small `Matcher` interface the core needs;
* `outputs`: `SinkOutputs`, where each event and processed frame goes;
* `writers`: the files and the window (JSON lines written whole, the annotated video, ``--show``);
* `annotate`: boxes and labels drawn onto a frame;
* `web_feed`: what the web view gets (annotated JPEGs, unknown faces with their chips);
* `records`: what a processed frame is (`FrameResult`; its faces a `TrackedFaces`, the engines' `FaceBatch`
  with track and identity columns) and the JSON records of events, detections and summaries.

Why this cut: the core is where the sink's decisions are made and is tested without processes, so it holds
no sockets; the process only wires sockets to it; each output changes for its own reasons (a file format, a
drawing, the web view) and none of them needs the tracker; the records are the one vocabulary they share.
Imports point one way: process -> core -> outputs -> writers, annotate, web_feed -> records; matcher
stands alone. This file imports nothing: callers import from the module that holds the job (the supervisor
takes `records.describe_summary` and `matcher.open_matcher` without loading the sink process).
"""
