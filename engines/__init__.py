"""Models in, numbers out: dlib model reader, ONNX export, runtimes, detector, landmarks, chips, embedder."""
