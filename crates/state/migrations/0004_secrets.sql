-- Secrets of a namespace. `sealed` is the value encrypted by the server
-- (AEAD, with the namespace and name bound to it): the store never holds a
-- plaintext value.
CREATE TABLE IF NOT EXISTS secrets (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    sealed TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);
