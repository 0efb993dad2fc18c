"""Per-stream domain logic, free of sockets and processes: tracking, followers and scans, scene cuts, kiosk decisions,
unknown faces, and enrolment from image files."""
