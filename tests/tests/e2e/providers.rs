//! End-to-end tests of the HTTP provider plugins (under construction).
