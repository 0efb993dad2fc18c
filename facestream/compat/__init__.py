"""Drop-in replacements for other face libraries' APIs, computed by facestream's models.

`facestream.compat.face_recognition`: ageitgey's face_recognition 1.4.0 (`api.py`), same names,
signatures, defaults, return types and numbers:

    import facestream.compat.face_recognition as face_recognition
"""
