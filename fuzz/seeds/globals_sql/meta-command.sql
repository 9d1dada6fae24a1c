SELECT 1; \! id
