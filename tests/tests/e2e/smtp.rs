//! End-to-end tests of the smtp plugin against a real SMTP server (under construction).
