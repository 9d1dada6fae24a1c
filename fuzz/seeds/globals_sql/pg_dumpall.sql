--
-- PostgreSQL database cluster dump
--

\restrict 3kd8QmXzeY7tT1pV

SET default_transaction_read_only = off;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

CREATE ROLE kompose;
ALTER ROLE kompose WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2lnbg==';
COMMENT ON ROLE kompose IS 'it''s';

\unrestrict 3kd8QmXzeY7tT1pV

--
-- PostgreSQL database cluster dump complete
--
