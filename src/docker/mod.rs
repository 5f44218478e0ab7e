//! Docker as the inventory source (issue 3).
