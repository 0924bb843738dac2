// Type-aware linting over everything TypeScript in the project. The rules chosen are the ones that
// catch what reviews here kept finding: promises nobody awaits, async callbacks where sync ones are
// expected, switches that miss a case, and imports that pull runtime code in only for a type.
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**", "reports/**", ".stryker-tmp/**", ".tools/**", "infra/**"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ["**/*.ts"],
    languageOptions: {
      parserOptions: {
        projectService: { allowDefaultProject: ["vitest.config.ts", "vitest.mutation.config.ts"] },
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/no-misused-promises": "error",
      "@typescript-eslint/await-thenable": "error",
      // A default clause is a decision too: it handles the rest on purpose.
      "@typescript-eslint/switch-exhaustiveness-check": ["error", { considerDefaultExhaustiveForUnions: true }],
      "@typescript-eslint/consistent-type-imports": ["error", { fixStyle: "inline-type-imports" }],
      "@typescript-eslint/no-explicit-any": "off",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
    },
  },
  {
    // Plain JavaScript scripts (config, the mutation runner) run on Node.
    files: ["**/*.{js,mjs}"],
    languageOptions: { globals: { process: "readonly", console: "readonly", URL: "readonly", Buffer: "readonly" } },
  },
  {
    // Tests match terminal output: escape codes (\x1b) and two-space table columns are what they check.
    files: ["test/**/*.ts"],
    rules: { "no-control-regex": "off", "no-regex-spaces": "off" },
  },
);
