/** The fault proxy lives in tools/ (the soak runs it from the build output); tests import it from here as before. */
export * from "../../tools/fault-proxy.js";
