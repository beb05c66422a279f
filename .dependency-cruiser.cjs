// The layering of src/ (docs/DESIGN.md, "Folders"): each folder may import
// only from the folders listed before it, and nothing may import in a
// cycle. tests/architecture.test.ts runs this check.
const LAYERS = ['base', 'io', 'devices', 'kernel', 'state', 'drive', 'sync', 'restore', 'daemon', 'cli'];

const above = (i) => LAYERS.slice(i + 1).join('|');

module.exports = {

  forbidden: [
    {
      name: 'no-cycle',
      comment: 'An import cycle: two modules that need each other are one concept, or one holds what belongs lower down.',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    ...LAYERS.slice(0, -1).map((layer, i) => ({
      name: `${layer}-below-${above(i).replace(/\|/g, '-')}`,
      comment: `src/${layer}/ sits below ${above(i)}: it may not import from them.`,
      severity: 'error',
      from: { path: `^src/${layer}/` },
      to: { path: `^src/(${above(i)})/` },
    })),
    {
      name: 'src-in-folders',
      comment: 'Every module of src/ lives in one of the layer folders.',
      severity: 'error',
      from: { path: '^src/', pathNot: `^src/(${LAYERS.join('|')})/` },
      to: {},
    },
    {
      name: 'src-not-tests',
      comment: 'The program never imports tests or tools.',
      severity: 'error',
      from: { path: '^src/' },
      to: { path: '^(tests|tools)/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|node_modules)/' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { extensions: ['.ts', '.js'] },
  },
};
