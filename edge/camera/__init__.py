"""The edge camera agent: video file / RTSP / device / simulator frames -> JPEG -> Kafka
``camera.frames`` (``citystream edge camera``)."""
