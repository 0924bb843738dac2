/** Lives in tools/ beside the fault proxy that uses it; test servers import it from here as before. */
export * from "../../tools/loopback.js";
